package test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// The rescue of a spent quota across real `wxtoken serve` processes. Their
// clock is the wall's (a process cannot be handed the fake's), so the day
// is today's in China: tokens of a few seconds expire long before midnight
// unless the test runs in the last seconds of a China day.

// rescueEvents follows the rescue events (failure events that say what
// became of a spent quota) of appid and its tickets.
func rescueEvents(t *testing.T, nc *nats.Conn, appid string) <-chan kv.FailureEvent {
	t.Helper()
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(kv.Subjects{}.Failed(appid)+".>", msgs)
	if err != nil {
		t.Fatal(err)
	}
	own, err := nc.ChanSubscribe(kv.Subjects{}.Failed(appid), msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe(); own.Unsubscribe() })
	events := make(chan kv.FailureEvent, 256)
	// msgs is NATS's to send on until the subscriptions end, so it is
	// never closed: the forwarding ends with the test.
	done := make(chan struct{})
	go func() {
		for {
			var m *nats.Msg
			select {
			case m = <-msgs:
			case <-done:
				return
			}
			var ev kv.FailureEvent
			if json.Unmarshal(m.Data, &ev) == nil && ev.Rescue != "" {
				select {
				case events <- ev:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	return events
}

// ledgerOf reads appid's ledger from the token bucket.
func ledgerOf(t *testing.T, ctx context.Context, b jetstream.KeyValue, appid string) kv.Ledger {
	t.Helper()
	e, err := b.Get(ctx, kv.LedgerKey(appid))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.DecodeLedger(appid, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestQuotaRescueDurableAcrossLeaderSIGKILL: the day's token quota runs
// out (one fetch a day); the leader resets it with quota/clear, spending
// one of its month's 50, and is SIGKILLed at once. The next leader, when
// the quota runs out again, reads the reset in the ledger and spends none.
func TestQuotaRescueDurableAcrossLeaderSIGKILL(t *testing.T) {
	ctx := testenv.Context(t, 45*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 6 * time.Second})
	fake.AddApp(appA, "secret-of-a")
	fake.SetQuotaLimit(appA, fakewechat.PathToken, 1)
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA,
		"WECHAT_APPSECRET=secret-of-a", "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s"}
	nc := testenv.Connect(t, srv.ClientURL())
	events := rescueEvents(t, nc, appA)

	one := startWxtoken(t, "one", env, "serve", "--instance", "one")
	one.waitOutput(t, ctx, "token rotated")
	two := startWxtoken(t, "two", env, "serve", "--instance", "two")
	two.waitOutput(t, ctx, "standing by")

	ev := awaitRescue(t, ctx, events)
	if ev.Rescue != "rescued" || ev.ResetAPI != "quota_clear" || ev.BudgetRemaining == nil || *ev.BudgetRemaining != 49 {
		t.Fatalf("first rescue event %+v, want rescued by quota_clear with 49 left", ev)
	}
	one.cmd.Process.Signal(syscall.SIGKILL)

	// The next leader learns from the ledger that the path was reset
	// today: it fetches once more a minute later (the reset may have come
	// after WeChat's answer), and resets nothing.
	two.waitOutput(t, ctx, "a rescue of it was tried today for another credential that spends it too, or is under way: fetching again in 1m0s, once")
	if n := fake.ClearsThisMonth(appA, fakewechat.ClearAPI); n != 1 {
		t.Errorf("WeChat saw %d quota/clear resets, want 1", n)
	}
	if n := fake.ClearsThisMonth(appA, fakewechat.ClearAccount); n != 0 {
		t.Errorf("WeChat saw %d account resets, want 0", n)
	}
	l := ledgerOf(t, ctx, testenv.Bucket(t, ctx, nc), appA)
	if l.MonthCalls["quota_clear"] != 1 || l.Rescue == nil || l.Rescue.Count != 1 {
		t.Errorf("ledger's month %v, rescue %+v: want one quota_clear spent, one rescue", l.MonthCalls, l.Rescue)
	}

	out, errOut, code := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "status")
	want := regexp.MustCompile(`/cgi-bin/token\s+rescued\s+quota_clear\s+1\s+quota_clear 1/50, clear_quota 0/10`)
	if code != 0 || !strings.Contains(out, "spent quotas") || !want.MatchString(out) {
		t.Errorf("status (exit %d) does not show the rescue as %q:\n%s%s", code, want, out, errOut)
	}
}

// TestQuotaRescueMonthBudgetAcrossReplicaDeaths: three replicas of an app
// with a token and a jsapi ticket, each of whose paths runs out after one
// fetch a day, and whose paths quota/clear does not take (76021): every
// rescue goes to the account's budget, of which --quota-clear-reserve 9
// leaves wxtoken one. Leaders are SIGKILLed as each rescue event comes
// (whichever replica took over), new replicas join; WeChat never sees
// more account resets than the budget.
func TestQuotaRescueMonthBudgetAcrossReplicaDeaths(t *testing.T) {
	const budget = 1
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 6 * time.Second, TicketExpiresIn: 6 * time.Second})
	fake.AddApp(appA, "secret-of-a")
	for _, path := range []string{fakewechat.PathToken, fakewechat.PathGetTicket} {
		fake.SetQuotaLimit(appA, path, 1)
		fake.RefuseClear(path, 76021)
	}
	appsFile := filepath.Join(t.TempDir(), "apps.yaml")
	writeFile(t, appsFile, fmt.Sprintf("apps:\n  - appid: %s\n    secret_env: SECRET_A\n    tickets: [jsapi]\n", appA))
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WXTOKEN_APPS=" + appsFile, "SECRET_A=secret-of-a",
		"WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s", fmt.Sprintf("WXTOKEN_QUOTA_CLEAR_RESERVE=%d", 10-budget)}
	nc := testenv.Connect(t, srv.ClientURL())

	replicas := map[string]*process{}
	start := func(name string) {
		replicas[name] = startWxtoken(t, name, env, "serve", "--instance", name)
	}
	start("r1")
	replicas["r1"].waitOutput(t, ctx, "token rotated") // the lease's bucket is there
	leases := leaseHolders(t, ctx, nc)
	start("r2")
	start("r3")
	holder := ""
	verdicts := map[string]int{}
	for round := range 4 {
		// Each leader, in turn, decides on a spent quota: rescued, not
		// rescued (budget at the reserve, or reset today already), or
		// once more a minute later (a reset made today by a replica
		// killed since), and is killed.
		holder = latestHolder(t, ctx, leases, holder, func(name string) bool { return replicas[name] != nil })
		verdicts[replicas[holder].waitOutputAny(t, ctx, "quota rescued", "not rescued", "fetching again in 1m0s, once")]++
		replicas[holder].cmd.Process.Signal(syscall.SIGKILL)
		delete(replicas, holder)
		start(fmt.Sprintf("r%d", 4+round))
		if n := fake.ClearsThisMonth(appA, fakewechat.ClearAccount); n > budget {
			t.Fatalf("round %d: WeChat saw %d account resets, over the budget of %d", round, n, budget)
		}
	}
	n := fake.ClearsThisMonth(appA, fakewechat.ClearAccount)
	l := ledgerOf(t, ctx, testenv.Bucket(t, ctx, nc), appA)
	spent := l.MonthCalls["clear_quota"] + l.MonthCalls["clear_quota_v2"]
	t.Logf("the leaders' verdicts %v; account resets: WeChat %d, ledger %d", verdicts, n, spent)
	// A leader killed right after its reset may not have recorded the
	// rescue itself; the reset was counted before it went.
	if n != budget || spent != budget || verdicts["quota rescued"] > budget {
		t.Errorf("WeChat saw %d account resets, the ledger counts %d, %d leaders said they rescued: want the budget, %d, spent once", n, spent, verdicts["quota rescued"], budget)
	}
	if verdicts["not rescued"]+verdicts["fetching again in 1m0s, once"] == 0 {
		t.Errorf("verdicts %v: want the spent quotas after the budget's reset not rescued", verdicts)
	}
}

// awaitRescue returns the next rescue event.
func awaitRescue(t *testing.T, ctx context.Context, events <-chan kv.FailureEvent) kv.FailureEvent {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-ctx.Done():
		t.Fatal("no rescue event")
		return kv.FailureEvent{}
	}
}

// latestHolder returns the lease's holder now: the last named by the
// lease's changes so far (was, if none came since), waiting for one if
// that is not alive.
func latestHolder(t *testing.T, ctx context.Context, leases <-chan leaseEvent, was string, alive func(string) bool) string {
	t.Helper()
	holder := was
	for {
		select {
		case ev := <-leases:
			if ev.instance != "" {
				holder = ev.instance
			}
			continue
		default:
		}
		if alive(holder) {
			return holder
		}
		select {
		case ev := <-leases:
			if ev.instance != "" {
				holder = ev.instance
			}
		case <-ctx.Done():
			t.Fatal("nobody holds the lease")
		}
	}
}
