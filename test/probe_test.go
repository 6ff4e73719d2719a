package test

import (
	"context"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestStandbyNotWhitelistedNeverLeadsWhileTheWhitelistedOneLives runs two
// `wxtoken serve` processes whose calls to WeChat go out from 127.0.0.3
// (not in the app's IP whitelist) and 127.0.0.2 (in it). The bad one
// starts first, alone, and leads (someone must) with its error visible;
// it reports the refusal at its first probe, with the fix. Once the good
// one stands, the bad one hands the lease over and never takes it while
// the good one lives; its /readyz, its metric and `wxtoken status` say
// why. When the good one is SIGKILLed, the bad one leads alone, its error
// still visible.
func TestStandbyNotWhitelistedNeverLeadsWhileTheWhitelistedOneLives(t *testing.T) {
	ctx := testenv.Context(t, 90*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")
	fake.SetWhitelist(appA, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}, EveryAPI: true})
	const ttl, probeEvery = 2 * time.Second, 2 * time.Second
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA, "WECHAT_APPSECRET=secret-of-a",
		"WXTOKEN_LEASE_TTL=" + ttl.String(), "WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_PROBE_EVERY=" + probeEvery.String(),
		"WXTOKEN_HTTP_ADDR=127.0.0.1:0"}
	nc := testenv.Connect(t, srv.ClientURL())
	const fix = "add 127.0.0.3 to the IP whitelist of " + appA

	// Alone, the replica that cannot lead leads, and says what is wrong.
	wxtokenBinary(t) // built before the clock starts
	started := time.Now()
	bad := startWxtoken(t, "bad", env, "serve", "--instance", "bad", "--wechat-source-addr", "127.0.0.3")
	bad.waitOutput(t, ctx, "this replica cannot lead "+appA+": "+fix)
	t.Logf("the replica at 127.0.0.3 reported it could not lead %s after it started (--probe-every %s)", time.Since(started).Round(time.Millisecond), probeEvery)
	bad.waitOutput(t, ctx, "became leader")
	badOps := bad.opsURL(t, ctx)
	awaitReadyzSaying(t, ctx, badOps, "this replica leads, but cannot fetch 1 app(s)", fix)
	leases := leaseHolders(t, ctx, nc)

	// The replica that can lead starts: the bad one hands the lease over
	// at once (a release, not a lapse) and stands by without campaigning.
	good := startWxtoken(t, "good", env, "serve", "--instance", "good", "--wechat-source-addr", "127.0.0.2")
	if events := awaitHolder(t, ctx, leases, "good"); !released(events) {
		t.Error("the bad leader did not release the lease to the good replica")
	}
	bad.waitOutput(t, ctx, "handing the lease over to replica good")
	bad.waitOutput(t, ctx, "standing by without campaigning: replica good can lead more apps")
	good.waitOutput(t, ctx, "token rotated")
	if strings.Contains(good.output.String(), "cannot lead") {
		t.Errorf("the whitelisted replica says it cannot lead:\n%s", good.output.String())
	}

	awaitReadyzSaying(t, ctx, badOps, "this replica could not take over 1 app(s)", fix)
	if _, metrics := httpGet(t, badOps+"/metrics"); !strings.Contains(metrics, `wxtoken_replica_can_lead{appid="`+appA+`"} 0`) {
		t.Error("the bad replica's wxtoken_replica_can_lead is not 0")
	}
	goodOps := good.opsURL(t, ctx)
	awaitReadyz(t, ctx, goodOps, 200)
	if _, metrics := httpGet(t, goodOps+"/metrics"); !strings.Contains(metrics, `wxtoken_replica_can_lead{appid="`+appA+`"} 1`) {
		t.Error("the good replica's wxtoken_replica_can_lead is not 1")
	}
	awaitReplicas(t, ctx, nc, func(r map[string]kv.ReplicaState) bool {
		return r["good"].Leading && r["good"].CannotLead == 0 && r["bad"].Standing && !r["bad"].Leading && r["bad"].CannotLead == 1
	})
	out, stderr, code := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "status")
	for _, want := range []string{`(?m)^bad\s+standby\s+1/1\s+1\s`, `(?m)^good\s+leader\s+1/1\s+0\s`,
		`(?m)^bad cannot lead ` + appA + `: errcode 40164 \(.*\): ` + regexp.QuoteMeta(fix)} {
		if code != 0 || !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("wxtoken status (exit %d) does not match %s:\n%s%s", code, want, out, stderr)
		}
	}

	// The good replica renews its lease, again and again: nobody else
	// takes it, through more than two of the bad one's probes.
	for renewals := 0; renewals < 3*int(2*probeEvery/ttl)+1; renewals++ {
		select {
		case ev := <-leases:
			if ev.instance != "good" {
				t.Fatalf("while the good replica lives, the lease went to %q", ev.instance)
			}
		case <-ctx.Done():
			t.Fatal("the good replica stopped renewing its lease")
		}
	}

	// The good one dies: the bad one leads, alone, its error visible.
	good.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	awaitHolder(t, ctx, leases, "bad")
	t.Logf("the bad replica took over %s after the SIGKILL of the good one (lease TTL %s)", time.Since(killed).Round(time.Millisecond), ttl)
	bad.waitOutput(t, ctx, "campaigning: no live replica can lead more apps than this one")
	awaitReadyzSaying(t, ctx, badOps, "this replica leads, but cannot fetch 1 app(s)", fix)
	awaitReplicas(t, ctx, nc, func(r map[string]kv.ReplicaState) bool { return r["bad"].Leading && r["bad"].CannotLead == 1 })
	if out, _, _ := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "status"); !regexp.MustCompile(`(?m)^bad\s+leader\s+1/1\s+1\s`).MatchString(out) ||
		!strings.Contains(out, "bad cannot lead "+appA) {
		t.Errorf("wxtoken status after the takeover does not show the bad replica leading with its error:\n%s", out)
	}
}

// awaitReadyzSaying waits until base/readyz answers 503 saying each of
// says: a replica that cannot lead an app is not ready, whether it leads
// (it cannot fetch) or stands by (it could not take over).
func awaitReadyzSaying(t *testing.T, ctx context.Context, base string, says ...string) {
	t.Helper()
	for {
		code, body := httpGet(t, base+"/readyz")
		saysAll := code == 503
		for _, s := range says {
			saysAll = saysAll && strings.Contains(body, s)
		}
		if saysAll {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("/readyz never answered 503 saying %q; last %d %q", says, code, body)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// awaitReplicas follows the replicas bucket until done holds for the
// states in it, by instance.
func awaitReplicas(t *testing.T, ctx context.Context, nc *nats.Conn, done func(map[string]kv.ReplicaState) bool) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.KeyValue(ctx, kv.ReplicasBucket(kv.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan map[string]kv.ReplicaState, 1024)
	seen := map[string]kv.ReplicaState{}
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: ">", OnEntry: func(e jetstream.KeyValueEntry) {
		if s, err := kv.DecodeReplicaState(e.Value()); err == nil {
			seen[s.Instance] = s
		}
		copied := map[string]kv.ReplicaState{}
		for k, v := range seen {
			copied[k] = v
		}
		select {
		case states <- copied:
		default:
		}
	}})
	var last map[string]kv.ReplicaState
	for {
		select {
		case s := <-states:
			if done(s) {
				return
			}
			last = s
		case <-ctx.Done():
			t.Fatalf("the replicas never were as awaited; last seen %+v", last)
		}
	}
}
