package test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/secretset"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// shopApp is the app of the one-app example in nats.conf.
const shopApp = "wx1234567890abcdef"

var passwords = map[string]string{"refresher": "pw-refresher", "service": "pw-service", "agent": "pw-agent", "admin": "pw-admin", "shop": "pw-shop"}

// rolesServer starts a server with the repository's nats.conf, its one-app
// example switched on (the "#>" lines), on a free loopback port.
func rolesServer(t *testing.T) *server.Server {
	t.Helper()
	return rolesServerEdited(t, func(conf string) string { return conf })
}

// rolesServerEdited is rolesServer with the configuration passed through edit.
func rolesServerEdited(t *testing.T, edit func(string) string) *server.Server {
	t.Helper()
	for user, pw := range passwords {
		t.Setenv("WXTOKEN_"+strings.ToUpper(user)+"_PASSWORD", pw)
	}
	conf, err := os.ReadFile("../nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(conf), "\n") {
		if trimmed := strings.TrimLeft(line, " "); strings.HasPrefix(trimmed, "#>") {
			line = strings.Repeat(" ", len(line)-len(trimmed)) + strings.TrimPrefix(trimmed, "#>")
		}
		lines = append(lines, line)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(edit(strings.Join(lines, "\n"))), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := embedded.FromConfigFile(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Only where it listens changes: the permissions are the file's.
	opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir = "127.0.0.1", -1, 0, t.TempDir()
	return testenv.StartNATS(t, opts)
}

// user is a connection as one of nats.conf's users, with its permission
// errors collected.
type user struct {
	nc         *nats.Conn
	violations chan error
}

func connectAs(t *testing.T, srv *server.Server, name string) user {
	t.Helper()
	violations := make(chan error, 64)
	nc := testenv.Connect(t, srv.ClientURL(), nats.UserInfo(name, passwords[name]), nats.CustomInboxPrefix("_INBOX_"+name),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				violations <- err
			}
		}))
	return user{nc: nc, violations: violations}
}

// denied waits for the server to refuse an action on subject.
func (u user) denied(t *testing.T, ctx context.Context, subject string) {
	t.Helper()
	for {
		select {
		case err := <-u.violations:
			if strings.Contains(err.Error(), subject) {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no permission violation for %q", subject)
		}
	}
}

func TestNATSConfRoles(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := rolesServer(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	const refused = "wxrefused000000001" // an app WeChat refuses: its failure events
	fake.Fail(refused, fakewechat.Fault{ErrCode: 40164})
	service, admin, shop := connectAs(t, srv, "service"), connectAs(t, srv, "admin"), connectAs(t, srv, "shop")
	failed, err := service.nc.SubscribeSync(kv.Subjects{}.Failed(refused))
	if err != nil {
		t.Fatal(err)
	}
	service.nc.Flush()
	refresher := connectAs(t, srv, "refresher")
	testenv.Refresher(t, refresher.nc, publisher.Config{Apps: testenv.Apps(fake, appA, shopApp, refused), UpstreamURL: url})
	short := func() context.Context { return testenv.Context(t, time.Second) }
	jsOf := func(u user) jetstream.JetStream {
		js, err := jetstream.New(u.nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}

	// The refresher did its part: the service's subscriber has a token and
	// gets a refreshed one. That covers bucket creation, writes, the lease,
	// rotation events and the refresh endpoint's answers to another user.
	rotated, err := service.nc.SubscribeSync(kv.Subjects{}.Rotated(appA))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := subscriber.New(ctx, service.nc, appA)
	if err != nil {
		t.Fatalf("service cannot follow a token: %v", err)
	}
	defer sub.Close()
	fake.Issue(appA)
	before := sub.Token()
	fresh, err := sub.Refresh(ctx, before.Revision)
	if err != nil || fresh.Revision <= before.Revision {
		t.Fatalf("service cannot refresh: %v", err)
	}
	if _, err := rotated.NextMsgWithContext(ctx); err != nil {
		t.Errorf("service does not see rotation events: %v", err)
	}
	if _, err := failed.NextMsgWithContext(ctx); err != nil {
		t.Errorf("service does not see failure events (or the refresher may not send them): %v", err)
	}
	// micro discovery: the refresher answers a PING from another user.
	if msg, err := admin.nc.RequestWithContext(ctx, "$SRV.PING."+kv.ServiceName, nil); err != nil || !strings.Contains(string(msg.Data), kv.ServiceName) {
		t.Errorf("micro discovery across users: %v", err)
	}
	serviceBucket, err := kv.Bind(ctx, jsOf(service), "")
	if err != nil {
		t.Fatalf("service cannot bind the bucket: %v", err)
	}
	if _, err := serviceBucket.Get(ctx, appA); err != nil {
		t.Errorf("service cannot get a token: %v", err)
	}

	t.Run("service may not write a token", func(t *testing.T) {
		if _, err := serviceBucket.Put(short(), appA, []byte(`{"appid":"forged"}`)); err == nil {
			t.Fatal("service's Put succeeded")
		}
		service.denied(t, ctx, "$KV.wechat_tokens."+appA)
		adminBucket, _ := kv.Bind(ctx, jsOf(admin), "")
		e, err := adminBucket.Get(ctx, appA)
		if err != nil || e.Revision() != fresh.Revision || testenv.Record(t, e).Value != fresh.Value {
			t.Errorf("the token changed after the refused Put: %v", err)
		}
	})
	t.Run("service hears of removals", func(t *testing.T) {
		removed, err := service.nc.SubscribeSync(kv.Subjects{}.Removed(">"))
		if err != nil {
			t.Fatal(err)
		}
		service.nc.Flush() // the server has the subscription before the event
		if err := refresher.nc.Publish(kv.Subjects{}.Removed(appA), []byte(`{"appid":"`+appA+`"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := removed.NextMsgWithContext(ctx); err != nil {
			t.Fatalf("the service did not receive the refresher's removal event: %v", err)
		}
	})
	t.Run("service may not announce", func(t *testing.T) {
		for _, subject := range []string{kv.Subjects{}.Value(appA), kv.Subjects{}.Rotated(appA), kv.Subjects{}.Failed(appA), kv.Subjects{}.Removed(appA)} {
			service.nc.Publish(subject, []byte(`{"appid":"forged"}`))
			service.nc.Flush()
			service.denied(t, ctx, subject)
		}
	})
	t.Run("service may not manage streams", func(t *testing.T) {
		// The API request itself (jetstream.CreateKeyValue would stop
		// earlier, at the account info it may not read either).
		service.nc.Publish("$JS.API.STREAM.CREATE.KV_stolen", []byte(`{"name":"KV_stolen","subjects":["$KV.stolen.>"]}`))
		service.nc.Flush()
		service.denied(t, ctx, "$JS.API.STREAM.CREATE.KV_stolen")
		if _, err := jsOf(admin).Stream(ctx, "KV_stolen"); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("the stream exists after the refused create: %v", err)
		}
		if err := jsOf(service).DeleteKeyValue(short(), kv.DefaultBucket); err == nil {
			t.Error("service deleted the token bucket")
		}
		service.denied(t, ctx, "$JS.API.STREAM.DELETE.KV_wechat_tokens")
	})
	t.Run("service may not serve refreshes or read others' replies", func(t *testing.T) {
		for _, subject := range []string{"wechat.token.refresh.>", "_INBOX_refresher.>", "_INBOX_admin.>"} {
			if _, err := service.nc.SubscribeSync(subject); err != nil {
				t.Fatal(err)
			}
			service.nc.Flush()
			service.denied(t, ctx, subject)
		}
	})
	t.Run("the agent may ask for logins, a service may not", func(t *testing.T) {
		agent := connectAs(t, srv, "agent")
		if sub, err := subscriber.New(ctx, agent.nc, appA); err != nil {
			t.Errorf("the agent cannot follow a token as a service does: %v", err)
		} else {
			sub.Close()
		}
		data, _ := json.Marshal(kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: fake.LoginCode(appA, "someone"), GrantType: "authorization_code"})
		msg, err := agent.nc.RequestWithContext(ctx, kv.Subjects{}.Login(appA), data)
		var reply kv.LoginReply
		if err != nil || json.Unmarshal(msg.Data, &reply) != nil || !strings.Contains(string(reply.Body), `"openid"`) {
			t.Errorf("the agent's login request: %v, %+v", err, reply)
		}
		// A service would exchange any code of any app, past the agent's
		// auth file.
		service.nc.Publish(kv.Subjects{}.Login(appA), data)
		service.nc.Flush()
		service.denied(t, ctx, kv.Subjects{}.Login(appA))
		// Nor may either answer in the refresher's place, and be sent codes.
		for _, u := range []user{service, agent} {
			if _, err := u.nc.SubscribeSync("wechat.token.login.>"); err != nil {
				t.Fatal(err)
			}
			u.nc.Flush()
			u.denied(t, ctx, "wechat.token.login.>")
		}
	})
	t.Run("the agent reports usage to the refresher, and no one else does or reads it", func(t *testing.T) {
		subject := kv.Subjects{}.Usage()
		agent := connectAs(t, srv, "agent")
		reports, err := refresher.nc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		refresher.nc.Flush()
		agent.nc.Publish(subject, []byte(`{"agent":"a","at":"2026-12-07T10:31:07Z","paths":[]}`))
		agent.nc.Flush()
		if msg, err := reports.NextMsgWithContext(ctx); err != nil || !strings.Contains(string(msg.Data), `"agent":"a"`) {
			t.Fatalf("the refresher did not get the agent's report: %v", err)
		}
		for _, u := range []user{service, shop} {
			u.nc.Publish(subject, []byte(`{"agent":"posing"}`))
			u.nc.Flush()
			u.denied(t, ctx, subject)
		}
		for _, u := range []user{service, shop, agent} {
			if _, err := u.nc.SubscribeSync(subject); err != nil {
				t.Fatal(err)
			}
			u.nc.Flush()
			u.denied(t, ctx, subject)
		}
		refresher.nc.Publish(subject, []byte(`{"agent":"posing"}`))
		refresher.nc.Flush()
		refresher.denied(t, ctx, subject)
	})
	t.Run("refresher follows every app's failure events, for its status page", func(t *testing.T) {
		sub, err := refresher.nc.SubscribeSync(kv.Subjects{}.Failed(">"))
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		refresher.nc.Flush()
		if err := refresher.nc.Publish(kv.Subjects{}.Failed(shopApp), []byte(`{"appid":"`+shopApp+`"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsgWithContext(short()); err != nil {
			t.Errorf("the refresher does not receive failure events (nats.conf's REFRESHER subscribe): %v", err)
		}
	})
	t.Run("refresher may not read services' replies", func(t *testing.T) {
		if _, err := refresher.nc.SubscribeSync("_INBOX_service.>"); err != nil {
			t.Fatal(err)
		}
		refresher.nc.Flush()
		refresher.denied(t, ctx, "_INBOX_service.>")
	})
	t.Run("only the admin asks the replicas about secrets", func(t *testing.T) {
		prefix := kv.DefaultSubjectPrefix
		replicas, err := secretset.Discover(ctx, admin.nc, prefix, 5*time.Second, 1)
		if err != nil || len(replicas) != 1 {
			t.Fatalf("admin's discovery: %+v, %v; want the refresher", replicas, err)
		}
		if a, err := secretset.Check(ctx, admin.nc, prefix, replicas[0], appA, []byte("secret-of-"+appA)); err != nil || a.Outcome != secretset.Checked {
			t.Fatalf("admin's check: %+v, %v; want checked", a, err)
		}
		subjects := secretset.Subjects{Prefix: prefix}
		for name, u := range map[string]user{"service": service, "refresher": refresher} {
			for _, subject := range []string{subjects.Replicas(), subjects.Check(replicas[0].ID), subjects.Take(replicas[0].ID)} {
				u.nc.Publish(subject, nil)
				u.nc.Flush()
				t.Logf("%s may not publish on %s", name, subject)
				u.denied(t, ctx, subject)
			}
		}
		// Nobody but a refresher may pose as a replica and be sent a copy.
		if _, err := service.nc.SubscribeSync(prefix + ".admin.secret.>"); err != nil {
			t.Fatal(err)
		}
		service.nc.Flush()
		service.denied(t, ctx, prefix+".admin.secret.>")
	})
	t.Run("the refresher publishes what it could lead; a service may not read it", func(t *testing.T) {
		name := kv.ReplicasBucket(kv.DefaultBucket)
		b, err := jsOf(admin).KeyValue(ctx, name)
		if err != nil {
			t.Fatalf("the refresher made no replicas bucket: %v", err)
		}
		w, err := b.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil {
				continue // the initial values are done; the first write may come after
			}
			if s, err := kv.DecodeReplicaState(e.Value()); err != nil || s.Instance == "" {
				t.Errorf("the refresher's state: %v", err)
			}
			break
		}
		if _, err := jsOf(service).KeyValue(short(), name); err == nil {
			t.Error("service bound the replicas bucket")
		}
		service.denied(t, ctx, "$JS.API.STREAM.INFO.KV_"+name)
	})
	t.Run("admin may do anything", func(t *testing.T) {
		b, err := kv.Bind(ctx, jsOf(admin), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Put(ctx, "wx-admin-scratch", []byte("x")); err != nil {
			t.Errorf("admin's Put: %v", err)
		}
		if _, err := jsOf(admin).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "admin_scratch"}); err != nil {
			t.Errorf("admin cannot create a bucket: %v", err)
		}
	})
	t.Run("only the refresher reads or writes the platform bucket", func(t *testing.T) {
		// Refresh tokens cannot be fetched again, nor may a service see one.
		ctx := testenv.Context(t, 15*time.Second) // a refusal fails this subtest, not the rest
		const component, authorizer, token = "wxc0000000000000a1", "wxa0000000000000a1", "refreshtoken@@@held-by-the-refresher"
		key := kv.AuthorizerKey(component, authorizer)
		platform, err := jsOf(refresher).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16})
		if err != nil {
			t.Fatalf("refresher cannot create the platform bucket: %v", err)
		}
		_, rev, _, err := kv.UpdateAuthorizer(ctx, platform, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
			return kv.Authorizer{RefreshToken: token, IssuedAt: time.Now()}, true
		})
		if err != nil {
			t.Fatalf("refresher cannot write an authorizer: %v", err)
		}
		if e, err := platform.Get(ctx, key); err != nil || e.Revision() != rev {
			t.Errorf("refresher cannot get the authorizer: %v", err)
		}
		w, err := platform.WatchAll(ctx)
		if err != nil {
			t.Fatalf("refresher cannot watch the platform bucket: %v", err)
		}
		if e := <-w.Updates(); e == nil || e.Key() != key {
			t.Errorf("refresher's watch gave %v", e)
		}
		w.Stop()

		if _, err := jsOf(service).KeyValue(short(), kv.DefaultPlatformBucket); err == nil {
			t.Error("service bound the platform bucket")
		}
		service.denied(t, ctx, "$JS.API.STREAM.INFO.KV_wechat_platform")
		// What a Get, a watch and a Put send, for a service that skips
		// the bind.
		for _, subject := range []string{
			"$JS.API.DIRECT.GET.KV_wechat_platform.$KV.wechat_platform." + key,
			"$JS.API.STREAM.MSG.GET.KV_wechat_platform",
			"$JS.API.CONSUMER.CREATE.KV_wechat_platform.stolen.$KV.wechat_platform.>",
			"$KV.wechat_platform." + key,
		} {
			service.nc.Publish(subject, []byte(`{"component_appid":"`+component+`","authorizer_appid":"`+authorizer+`","refresh_token":"forged"}`))
			service.nc.Flush()
			service.denied(t, ctx, subject)
		}
		// Nor may it listen to the writes as they are stored.
		if _, err := service.nc.SubscribeSync("$KV.wechat_platform.>"); err != nil {
			t.Fatal(err)
		}
		service.nc.Flush()
		service.denied(t, ctx, "$KV.wechat_platform.>")
		if e, err := platform.Get(ctx, key); err != nil || e.Revision() != rev {
			t.Errorf("the authorizer changed after the refused Put: %v", err)
		}

		// The replay bucket beside it, the same: the refresher's alone.
		const sig = "0123456789abcdef0123456789abcdef01234567"
		replays, err := jsOf(refresher).CreateOrUpdateKeyValue(ctx, kv.ReplayConfig(kv.DefaultPlatformBucket, 1))
		if err != nil {
			t.Fatalf("refresher cannot create the replay bucket: %v", err)
		}
		if err := kv.TakePush(ctx, replays, sig, kv.TakenPush{ComponentAppID: component, TakenAt: time.Now()}); err != nil {
			t.Errorf("refresher cannot record a push: %v", err)
		}
		if taken, err := kv.PushTaken(ctx, replays, sig); err != nil || !taken {
			t.Errorf("refresher cannot read a push it recorded: %v, %v", taken, err)
		}
		if _, err := jsOf(service).KeyValue(short(), kv.ReplayBucket(kv.DefaultPlatformBucket)); err == nil {
			t.Error("service bound the replay bucket")
		}
		for _, subject := range []string{
			"$JS.API.STREAM.INFO.KV_wechat_platform_replay",
			"$JS.API.DIRECT.GET.KV_wechat_platform_replay.$KV.wechat_platform_replay." + sig,
			"$KV.wechat_platform_replay." + sig,
		} {
			service.nc.Publish(subject, nil)
			service.nc.Flush()
			service.denied(t, ctx, subject)
		}

		// The CLI, as each user: the refresher imports and lists, the
		// service is refused.
		file := filepath.Join(t.TempDir(), "authorizers.txt")
		if err := os.WriteFile(file, []byte("wxa0000000000000a2 refreshtoken@@@imported-by-the-cli\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env := []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=refresher", "NATS_PASSWORD=" + passwords["refresher"]}
		// --force: this refresher serves no platform.
		if out, errOut, code := runWxtoken(t, env, "authorizers", "import", "--component", component, "--force", file); code != 0 || !strings.Contains(out, "1 imported") {
			t.Errorf("import as refresher: exit %d, stderr %q:\n%s", code, errOut, out)
		}
		out, errOut, code := runWxtoken(t, env, "authorizers", "list")
		if code != 0 || !strings.Contains(out, fingerprintOf(token)) || strings.Contains(out, token) {
			t.Errorf("list as refresher: exit %d, stderr %q:\n%s", code, errOut, out)
		}
		env[1], env[2] = "NATS_USER=service", "NATS_PASSWORD="+passwords["service"]
		for _, args := range [][]string{{"authorizers", "list"}, {"authorizers", "import", "--component", component, file}} {
			_, errOut, code := runWxtoken(t, env, args...)
			if code != 1 || !strings.HasPrefix(errOut, "wxtoken authorizers: permission denied") {
				t.Errorf("%v as service: exit %d, stderr %q", args, code, errOut)
			}
		}
	})
	t.Run("a one-app service reads its app and no other", func(t *testing.T) {
		mine, err := subscriber.New(ctx, shop.nc, shopApp)
		if err != nil {
			t.Fatalf("shop cannot follow its own app: %v", err)
		}
		mine.Close()
		if _, err := subscriber.New(short(), shop.nc, appA); err == nil {
			t.Error("shop followed another app's token")
		}
		shop.denied(t, ctx, "$KV.wechat_tokens."+appA)
		shop.nc.Publish(kv.Subjects{}.Refresh(appA), nil)
		shop.nc.Flush()
		shop.denied(t, ctx, kv.Subjects{}.Refresh(appA))
	})
	t.Run("the CLI says permission denied in one line", func(t *testing.T) {
		env := []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=shop", "NATS_PASSWORD=" + passwords["shop"]}
		// "permission denied" comes only from the refusal itself; a request
		// left to time out would say "deadline exceeded".
		_, errOut, code := runWxtoken(t, env, "get", appA)
		if code != 1 || !strings.HasPrefix(errOut, "wxtoken get: permission denied") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
		out, _, code := runWxtoken(t, env, "get", shopApp)
		if code != 0 || strings.TrimSpace(out) != fake.Current(shopApp) {
			t.Errorf("shop's own app: exit %d", code)
		}
		env[1], env[2] = "NATS_USER=service", "NATS_PASSWORD="+passwords["service"]
		out, errOut, code = runWxtoken(t, env, "status")
		if code != 0 || !strings.Contains(out, "unknown") || errOut != "" {
			t.Errorf("status as service (who may not read the lease): exit %d, stderr %q:\n%s", code, errOut, out)
		}
		env[2] = "NATS_PASSWORD=wrong"
		if _, errOut, code = runWxtoken(t, env, "status"); code != 1 || !strings.Contains(errOut, "Authorization Violation") {
			t.Errorf("wrong password: exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("refresher may create a deleted bucket again", func(t *testing.T) {
		held := sub.Token()
		if err := jsOf(admin).DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
			t.Fatal(err)
		}
		// Back, written and announced: the service's subscriber sees the
		// same token at a newer revision.
		back := awaitNewer(t, ctx, sub, held.Revision)
		if back.Value != held.Value {
			t.Error("another token after the bucket came back")
		}
		if _, err := kv.Bind(ctx, jsOf(service), ""); err != nil {
			t.Errorf("service cannot bind the recreated bucket: %v", err)
		}
	})
	t.Run("wrong or missing password", func(t *testing.T) {
		for _, opt := range []nats.Option{nats.UserInfo("service", "wrong"), nats.UserInfo("nobody", "x"), nats.Name("anonymous")} {
			nc, err := nats.Connect(srv.ClientURL(), opt)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("error %v, want an authorization violation", err)
			}
		}
	})
}

// TestReplayGuardFallsBackWhenItsBucketIsRefused: with a nats.conf from
// before the replay bucket, the refresher may not have it; pushes are
// still taken in (a warning says what to grant), and each replica's own
// guard still refuses the replays it sees.
func TestReplayGuardFallsBackWhenItsBucketIsRefused(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := rolesServerEdited(t, func(conf string) string {
		var kept []string
		for _, line := range strings.Split(conf, "\n") {
			if !strings.Contains(line, "wechat_platform_replay") {
				kept = append(kept, line)
			}
		}
		return strings.Join(kept, "\n")
	})
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	if err := fake.AddPlatform(componentApp, componentSecret, componentToken, componentAESKey); err != nil {
		t.Fatal(err)
	}
	logs := newNotifyingBuffer()
	refresher := testenv.Refresher(t, connectAs(t, srv, "refresher").nc,
		publisher.Config{Apps: []publisher.App{platformApp()}, UpstreamURL: url, Logger: textLogger(logs)})
	for err := refresher.Refresher.Ready(); err != nil; err = refresher.Refresher.Ready() {
		select {
		case <-ctx.Done():
			t.Fatalf("the refresher never got ready: %v", err)
		case <-time.After(10 * time.Millisecond): // polled: readiness announces nothing
		}
	}
	taken := &lastRequest{next: refresher.Refresher.Callback()}
	hook := serveHTTP(t, taken) + "/"
	if _, answer, err := fake.PushTicket(ctx, hook, componentApp); err != nil || answer != "success" {
		t.Fatalf("a push without the shared replay guard: %q, %v; want it taken in", answer, err)
	}
	if status := taken.replayTo(t, hook); status != http.StatusConflict {
		t.Errorf("the push replayed to the replica that took it: %d, want 409", status)
	}
	if err := logs.waitFor(ctx, "replay bucket wechat_platform_replay (the refresher needs nats.conf's permissions on it"); err != nil {
		t.Errorf("no warning naming the replay bucket and the fix: %v\n%s", err, logs.String())
	}
}
