package test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// ledger is the value of an app's ledger key, as the README's wire
// contract has it (the part this test reads).
type ledger struct {
	AppID      string         `json:"appid"`
	Calls      map[string]int `json:"calls"`
	LastEnding time.Time      `json:"last_ending"`
	Elsewhere  *struct {
		Revision uint64 `json:"revision"`
		Count    int    `json:"count"`
	} `json:"invalidated_elsewhere"`
}

// TestStableTokenForcedElsewhereAndOwnForce: a stable_token app. Another
// deployment forces a refresh, which ends the stored token at once: the
// report of it is an invalidated_elsewhere event. WeChat then ends the
// next token without replacing it (a revocation: nobody fetched, so
// nobody is blamed), and the refresher forces a refresh itself; the
// refresher stops, an operator restores the token that force ended, a
// replica starts on it, and a service reports it: the ledger shows the
// refresher's own force after its fetch, so nothing more is said.
// `wxtoken status` shows the one.
func TestStableTokenForcedElsewhereAndOwnForce(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{ForceSpacing: time.Millisecond})
	reg := prometheus.NewRegistry()
	var logs syncBuffer
	b := openBucket(t, ctx, nc)
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appA))
	if err != nil {
		t.Fatal(err)
	}
	// The ledger tells calls apart by the second, as fetched_at does: the
	// refresher's clock moves on a second between a fetch and the forced
	// refresh that ends what it fetched, as it does in life.
	var shift atomic.Int64
	clock := publisher.Clock{Now: func() time.Time { return time.Now().Add(time.Duration(shift.Load())) }}
	cfg := publisher.Config{Apps: stableApps(fake, appA), UpstreamURL: url, MinForceInterval: time.Nanosecond,
		Registerer: reg, Logger: logs.logger(), Clock: clock}
	one := testenv.Refresher(t, nc, cfg)
	first := awaitEndpoint(t, ctx, nc, appA)
	report := func(rev uint64) kv.RefreshReply {
		t.Helper()
		reply := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: &rev, Reason: "40001"})
		if !reply.Refreshed || reply.Revision <= rev {
			t.Fatalf("the dead token of revision %d was not replaced: %+v", rev, reply)
		}
		return reply
	}

	callStable(t, url, appA, true) // another deployment's forced refresh
	second := report(first.Revision)
	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.Class != kv.ClassInvalidatedElsewhere || ev.Revision != first.Revision || ev.BeforeExpirySeconds <= 0 {
		t.Fatalf("want an invalidated_elsewhere event for revision %d, got %+v", first.Revision, ev)
	}
	if fake.Forced(appA) != 1 {
		t.Fatalf("the refresher forced a refresh for a token another deployment replaced (%d forced)", fake.Forced(appA))
	}

	// WeChat ends the token and keeps it current: only a forced refresh,
	// the refresher's own, replaces it.
	e, err := b.Get(ctx, appA)
	if err != nil {
		t.Fatal(err)
	}
	ended := testenv.Record(t, e)
	shift.Store(int64(time.Second))
	fake.Revoke(ended.Value)
	report(second.Revision)
	if fake.Forced(appA) != 2 {
		t.Fatalf("no forced refresh of the refresher's own (%d forced)", fake.Forced(appA))
	}
	data, err := kv.EncodeCredential(ended)
	if err != nil {
		t.Fatal(err)
	}
	// The operator restores the bucket while the refresher is down; a
	// replica starts on it.
	if err := one.Stop(); err != nil {
		t.Fatal(err)
	}
	restored, err := b.Put(ctx, appA, data)
	if err != nil {
		t.Fatal(err)
	}
	reg2 := prometheus.NewRegistry()
	cfg.Registerer = reg2
	testenv.Refresher(t, nc, cfg)
	awaitEndpoint(t, ctx, nc, appA)
	awaitCurrent(t, ctx, nc, restored)
	report(restored)

	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := failed.NextMsg(0); err == nil {
		t.Errorf("an event for the token the refresher's own force ended: %s", msg.Data)
	}
	if n := metricValue(t, exposition(reg), `wxtoken_tokens_invalidated_elsewhere_total{appid="`+appA+`"}`); n != 1 {
		t.Errorf("counter at %v, want 1", n)
	}
	if strings.Contains(exposition(reg2), "wxtoken_tokens_invalidated_elsewhere_total{") {
		t.Errorf("the replica that started on the restored token counted one:\n%s", exposition(reg2))
	}
	if lines := logs.linesWith("token ended by another party"); len(lines) != 1 || !strings.Contains(lines[0], "level=ERROR") {
		t.Errorf("want 1 ERROR line, got %q", lines)
	}
	e, err = b.Get(ctx, kv.LedgerKey(appA))
	if err != nil {
		t.Fatal(err)
	}
	var l ledger
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		t.Fatal(err)
	}
	if l.Elsewhere == nil || l.Elsewhere.Revision != first.Revision || l.Elsewhere.Count != 1 ||
		l.Calls["stable_token_force"] != 1 || l.Calls["stable_token"] < 3 || l.LastEnding.IsZero() {
		t.Errorf("ledger %s: want the token ended elsewhere (revision %d, 1 so far), 1 forced refresh and the normal calls",
			e.Value(), first.Revision)
	}

	out, errOut, code := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "status")
	if code != 0 || !strings.Contains(out, "tokens killed by someone else") {
		t.Fatalf("status (exit %d) does not show it:\n%s%s", code, out, errOut)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, appA+" ") && strings.Contains(line, " ago (") {
			if f := strings.Fields(line); len(f) < 6 || f[4] != strconv.FormatUint(first.Revision, 10) || f[len(f)-1] != "1" {
				t.Errorf("status names the wrong token: %q", line)
			}
			return
		}
	}
	t.Errorf("status has no line for %s:\n%s", appA, out)
}

// awaitCurrent waits until the refresher answers with revision rev as
// the current one.
func awaitCurrent(t *testing.T, ctx context.Context, nc *nats.Conn, rev uint64) {
	t.Helper()
	for {
		if reply := request(t, ctx, nc, appA, kv.RefreshRequest{}); reply.Revision >= rev {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the refresher never saw revision %d", rev)
		case <-time.After(10 * time.Millisecond): // polling the refresher's answer, not waiting for it to happen
		}
	}
}

// TestProbesAreCountedInTheLedger: a replica's probe of the secret (a
// stable_token call in normal mode, for a /cgi-bin/token app too) counts
// at WeChat, so it is counted in the app's ledger beside the fetches.
func TestProbesAreCountedInTheLedger(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	b := openBucket(t, ctx, nc)
	ledgers := testenv.Entries(t, b, kv.LedgerKey(appA))
	r := testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url, ProbeEvery: time.Hour})
	for {
		var l ledger
		if err := json.Unmarshal(testenv.Next(t, ctx, ledgers).Value(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Calls["token"] >= 1 && l.Calls["stable_token"] >= 1 {
			break
		}
	}
	// The fetch counted has gone and its token is stored (a stop during
	// its count would cut it short: counted, never made).
	testenv.Next(t, ctx, testenv.Entries(t, b, appA))
	// Stopped, nothing more is called: every call WeChat saw (the fetch
	// and the probe) was counted before it went.
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	e, err := b.Get(ctx, kv.LedgerKey(appA))
	if err != nil {
		t.Fatal(err)
	}
	var l ledger
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(appA); l.Calls["token"]+l.Calls["stable_token"] != calls || l.LastEnding.IsZero() {
		t.Errorf("ledger counts %v (last ending %s), WeChat saw %d calls", l.Calls, l.LastEnding, calls)
	}
}
