package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
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
	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/internal/secretset"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// The hub and the regions of these tests run the repository's own
// configuration files: nats.conf with its "#hub>" lines switched on, and
// nats-region.conf. Only where each server listens and stores changes.

const regionPassword = "pw-region"

// confWithLines returns the file's configuration with the lines behind
// each marker switched on ("#hub> x" becomes "x").
func confWithLines(t testing.TB, file string, markers ...string) string {
	t.Helper()
	conf, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(conf), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		for _, m := range markers {
			if rest, ok := strings.CutPrefix(trimmed, m+" "); ok {
				line = strings.Repeat(" ", len(line)-len(trimmed)) + rest
			}
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

// loadConf parses conf with the environment env (and the users'
// passwords), as nats-server would, and returns its options listening on a
// free loopback port and storing in a temporary directory.
func loadConf(t testing.TB, conf string, env map[string]string) *server.Options {
	t.Helper()
	for user, pw := range passwords {
		t.Setenv("WXTOKEN_"+strings.ToUpper(user)+"_PASSWORD", pw)
	}
	t.Setenv("WXTOKEN_REGION_PASSWORD", regionPassword)
	for k, v := range env {
		t.Setenv(k, v)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := embedded.FromConfigFile(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir = "127.0.0.1", -1, 0, t.TempDir()
	return opts
}

// hubConfOptions are the options of a hub server from nats.conf.
func hubConfOptions(t testing.TB) *server.Options {
	t.Helper()
	opts := loadConf(t, confWithLines(t, "../nats.conf", "#hub>"), nil)
	if opts.JetStreamDomain != "hub" || opts.LeafNode.Port == 0 {
		t.Fatalf("nats.conf as a hub: domain %q, leaf port %d", opts.JetStreamDomain, opts.LeafNode.Port)
	}
	opts.LeafNode.Host, opts.LeafNode.Port, opts.LeafNode.NoAdvertise = "127.0.0.1", -1, true
	return opts
}

// regionConfOptions are the options of region's server from
// nats-region.conf, its leaf connection going to hub ("host:port").
func regionConfOptions(t testing.TB, region, hub string) *server.Options {
	t.Helper()
	leaf := (&url.URL{Scheme: "nats-leaf", User: url.UserPassword("region", regionPassword), Host: hub}).String()
	opts := loadConf(t, confWithLines(t, "../nats-region.conf"), map[string]string{"WXTOKEN_REGION": region, "WXTOKEN_HUB_LEAF_URL": leaf})
	if opts.JetStreamDomain != region || opts.ServerName != region {
		t.Fatalf("nats-region.conf: domain %q, server name %q", opts.JetStreamDomain, opts.ServerName)
	}
	return opts
}

// connectUser connects to url as one of the configurations' users, with its
// inbox prefix.
func connectUser(t testing.TB, url, name string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return testenv.Connect(t, url, append([]nats.Option{nats.UserInfo(name, passwords[name]), nats.CustomInboxPrefix("_INBOX_" + name)}, opts...)...)
}

// hubCluster starts three hub servers from nats.conf, clustered, and waits
// for their JetStream meta leader; it returns them with their client URLs.
func hubCluster(t *testing.T, ctx context.Context) ([]*server.Server, []*server.Options, string) {
	t.Helper()
	routePorts := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	servers := make([]*server.Server, 3)
	all := make([]*server.Options, 3)
	var urls []string
	for i := range servers {
		opts := hubConfOptions(t)
		opts.ServerName = fmt.Sprintf("hub-%d", i+1)
		opts.Cluster = server.ClusterOpts{Name: "hub", Host: "127.0.0.1", Port: routePorts[i]}
		opts.Routes = routes
		servers[i], all[i] = testenv.StartNATS(t, opts), opts
		urls = append(urls, servers[i].ClientURL())
	}
	awaitMetaLeader(t, ctx, servers, len(servers))
	return servers, all, strings.Join(urls, ",")
}

// TestNATSRegionConfRoles: nats.conf as a hub and nats-region.conf, with
// their users. In a region, the service reads the copy and asks the hub
// for refreshes, and may write neither the copy nor the hub's bucket, nor
// ask the hub's JetStream anything; the region's refresher reaches only
// the hub's buckets, never streams of the region's own; and the region's
// server takes the hub's events, never the refresher's values, which the
// copy republishes instead.
func TestNATSRegionConfRoles(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	hubOpts := hubConfOptions(t)
	hub := testenv.StartNATS(t, hubOpts)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	hubRefresher := connectUser(t, hub.ClientURL(), "refresher")
	testenv.Refresher(t, hubRefresher, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: wechatURL, MinForceInterval: time.Nanosecond})
	testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, connectUser(t, hub.ClientURL(), "admin")), appA))
	regionSrv := testenv.StartNATS(t, regionConfOptions(t, "shanghai", testenv.LeafAddr(hubOpts)))
	testenv.AwaitLeaf(t, ctx, regionSrv)
	if _, err := region.Add(ctx, connectUser(t, regionSrv.ClientURL(), "admin"), region.Config{Hub: "hub"}); err != nil {
		t.Fatalf("admin cannot add the region's copy: %v", err)
	}
	short := func() context.Context { return testenv.Context(t, time.Second) }

	service := roleOf(t, regionSrv.ClientURL(), "service")
	js, _ := jetstream.New(service.nc)
	copied, err := kv.Bind(ctx, js, "")
	if err != nil {
		t.Fatalf("service cannot bind the copy: %v", err)
	}
	held, err := copied.Get(ctx, appA)
	if err != nil {
		t.Fatalf("service cannot get a token from the copy: %v", err)
	}
	// The hub's leader answers (WeChat says the token still works).
	if reply := refreshAnswered(t, ctx, service.nc, appA, held.Revision()); reply.Error != nil || reply.Revision != held.Revision() {
		t.Fatalf("service's refresh request from the region: %+v", reply)
	}

	t.Run("service may not write the copy or the hub's bucket", func(t *testing.T) {
		if _, err := copied.Put(short(), appA, []byte(`{"appid":"forged"}`)); err == nil {
			t.Error("service's Put succeeded")
		}
		// A copy's handle sends puts to the hub's bucket, through the
		// hub's domain.
		service.denied(t, ctx, "$JS.hub.API.$KV.wechat_tokens."+appA)
		service.nc.Publish("$KV.wechat_tokens."+appA, []byte(`{"appid":"forged"}`))
		service.nc.Flush()
		service.denied(t, ctx, "$KV.wechat_tokens."+appA)
		hubJS, _ := jetstream.NewWithDomain(service.nc, "hub")
		if _, err := hubJS.Stream(short(), "KV_wechat_tokens"); err == nil {
			t.Error("service asked the hub's JetStream")
		}
		service.denied(t, ctx, "$JS.hub.API.STREAM.INFO.KV_wechat_tokens")
	})
	t.Run("the region's agent exchanges logins at the hub's refresher", func(t *testing.T) {
		agent := roleOf(t, regionSrv.ClientURL(), "agent")
		data, _ := json.Marshal(kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: fake.LoginCode(appA, "someone"), GrantType: "authorization_code"})
		// The hub's queue subscription reaches the region a moment after
		// the leaf connects: ask until it has.
		for {
			attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
			msg, err := agent.nc.RequestWithContext(attempt, kv.Subjects{}.Login(appA), data)
			cancel()
			if err == nil {
				var reply kv.LoginReply
				if json.Unmarshal(msg.Data, &reply) != nil || !strings.Contains(string(reply.Body), fakewechat.OpenID(appA, "someone")) {
					t.Errorf("the login's reply: %s", msg.Data)
				}
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no refresher answered the region's login: %v", err)
			case <-time.After(10 * time.Millisecond): // no responders yet: the hub's interest is crossing
			}
		}
		service.nc.Publish(kv.Subjects{}.Login(appA), data)
		service.nc.Flush()
		service.denied(t, ctx, kv.Subjects{}.Login(appA))
	})
	t.Run("the region's agent reports its usage to the hub's refresher", func(t *testing.T) {
		reports, err := hubRefresher.SubscribeSync(kv.Subjects{}.Usage())
		if err != nil {
			t.Fatal(err)
		}
		defer reports.Unsubscribe()
		agent := roleOf(t, regionSrv.ClientURL(), "agent")
		// The hub's interest reaches the region a moment after the
		// subscription: publish until a report arrives.
		for {
			agent.nc.Publish(kv.Subjects{}.Usage(), []byte(`{"agent":"region","paths":[]}`))
			agent.nc.Flush()
			if _, err := reports.NextMsg(100 * time.Millisecond); err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("the region's agent's usage report never reached the hub's refresher")
			}
		}
		select {
		case err := <-agent.violations:
			t.Errorf("the region refused the agent's usage report: %v", err)
		default:
		}
	})
	t.Run("the region's refresher reaches only the hub's buckets", func(t *testing.T) {
		refresher := roleOf(t, regionSrv.ClientURL(), "refresher")
		// The API request itself (jetstream.CreateKeyValue stops earlier,
		// at the account info it may not read either).
		refresher.nc.Publish("$JS.API.STREAM.CREATE.KV_wechat_tokens_leader", []byte(`{"name":"KV_wechat_tokens_leader","subjects":["$KV.wechat_tokens_leader.>"]}`))
		refresher.nc.Flush()
		refresher.denied(t, ctx, "$JS.API.STREAM.CREATE.KV_wechat_tokens_leader")
		local, _ := jetstream.New(connectUser(t, regionSrv.ClientURL(), "admin"))
		if _, err := local.Stream(ctx, "KV_wechat_tokens_leader"); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("the region has a lease bucket of its own: %v", err)
		}
		hubJS, _ := jetstream.NewWithDomain(refresher.nc, "hub")
		if _, err := hubJS.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket)); err != nil {
			t.Errorf("the region's refresher cannot reach the hub's lease: %v", err)
		}
	})
	t.Run("the region's refresher answers secret set from the hub", func(t *testing.T) {
		standby := testenv.Refresher(t, connectUser(t, regionSrv.ClientURL(), "refresher"), publisher.Config{
			Apps:        []publisher.App{{AppID: appA, Secret: publisher.NewSecret("secret-of-" + appA)}},
			UpstreamURL: wechatURL, Instance: "region-s", JSDomain: "hub"})
		admin := connectUser(t, hub.ClientURL(), "admin")
		// Its subscription crosses the leaf a moment after it starts: ask
		// until both replicas answer.
		var replicas []secretset.Replica
		for len(replicas) < 2 {
			if ctx.Err() != nil {
				t.Fatalf("the region's replica never answered the hub's admin: %+v", replicas)
			}
			var err error
			if replicas, err = secretset.Discover(ctx, admin, kv.DefaultSubjectPrefix, 500*time.Millisecond, 2); err != nil {
				t.Fatal(err)
			}
		}
		region := replicas[1] // the leader comes first
		if region.Instance != "region-s" || region.Leading || standby.Leading() {
			t.Fatalf("replicas %+v: want the hub's leader, then region-s", replicas)
		}
		if a, err := secretset.Check(ctx, admin, kv.DefaultSubjectPrefix, region, appA, []byte("secret-of-"+appA)); err != nil || a.Outcome != secretset.Checked {
			t.Fatalf("the region's replica checked: %+v, %v", a, err)
		}
	})
	t.Run("the region takes the hub's events, and not its values", func(t *testing.T) {
		events, _ := service.nc.SubscribeSync(kv.Subjects{}.Rotated(appA))
		values, _ := service.nc.SubscribeSync(kv.Subjects{}.Value(appA))
		service.nc.Flush()
		// The hub learns of the region's subscriptions a moment later,
		// across the leaf: announce until the region hears.
		for {
			hubRefresher.Publish(kv.Subjects{}.Rotated(appA), []byte(`{"appid":"`+appA+`"}`))
			if _, err := events.NextMsg(100 * time.Millisecond); err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("no rotation event crossed to the region")
			}
		}
		// A value the copy never stores, which only the leaf could bring,
		// then an event, on the same connection and the same leaf: had
		// the value crossed, it would be here once the event is.
		hubRefresher.Publish(kv.Subjects{}.Value(appA), []byte("not from the copy"))
		hubRefresher.Publish(kv.Subjects{}.Rotated(appA), []byte(`{"appid":"`+appA+`"}`))
		if _, err := events.NextMsgWithContext(ctx); err != nil {
			t.Fatalf("no rotation event crossed to the region: %v", err)
		}
		if m, err := values.NextMsg(0); err == nil {
			t.Errorf("the refresher's value crossed to the region: %q", m.Data)
		}
	})
}

// roleOf connects to url as a user of the configurations, collecting the
// permission violations the server reports.
func roleOf(t *testing.T, url, name string) user {
	t.Helper()
	violations := make(chan error, 64)
	nc := connectUser(t, url, name, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			violations <- err
		}
	}))
	return user{nc: nc, violations: violations}
}
