package publisher

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

const (
	quotaApp    = "wxquota000000001"
	quotaSecret = "secret-of-the-quota-app"
	quotaEvery  = 300 * time.Millisecond
)

// quotaFixture is a fake WeChat with one app, an embedded NATS, and the
// means to run replicas of a refresher with a short --quota-every.
type quotaFixture struct {
	fake   *fakewechat.Server
	wechat *httptest.Server
	srv    *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
}

func newQuotaFixture(t *testing.T, cfg fakewechat.Config) *quotaFixture {
	t.Helper()
	fake := fakewechat.New(cfg)
	fake.AddApp(quotaApp, quotaSecret)
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv.ClientURL())
	return &quotaFixture{fake: fake, wechat: wechat, srv: srv, nc: nc, js: js}
}

// quotaContext bounds a test of the poller to 30 s; it ends as the test
// does, before the cleanups stop the replicas, as a deferred cancel would.
func quotaContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// quotaReplica is one running refresher of the fixture's app.
type quotaReplica struct {
	r    *Refresher
	reg  *prometheus.Registry
	logs *awaitedLog
	stop func()
}

func (f *quotaFixture) run(t *testing.T, ctx context.Context, instance string, tune ...func(*Config)) quotaReplica {
	t.Helper()
	nc, _ := natstest.Connect(t, f.srv.ClientURL())
	logs, reg := newAwaitedLog(), prometheus.NewRegistry()
	cfg := Config{Apps: []App{{AppID: quotaApp, Secret: NewSecret(quotaSecret)}}, UpstreamURL: f.wechat.URL,
		QuotaEvery: quotaEvery, LeaseTTL: 2 * time.Second, UpstreamTimeout: time.Second, Instance: instance,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	for _, fn := range tune {
		fn(&cfg)
	}
	r, err := New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(run) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", instance, err)
			}
		})
	}
	t.Cleanup(stop)
	return quotaReplica{r: r, reg: reg, logs: logs, stop: stop}
}

// settled is when the app's ledger, begun by the test's first replica,
// has counted long enough for its readings to be judged rather than set
// the day's baseline: twice the fixture's --upstream-timeout after it
// began.
func (f *quotaFixture) settled(t *testing.T, ctx context.Context) time.Time {
	t.Helper()
	return f.ledger(t, ctx).Since.Add(2 * time.Second)
}

// fetchAsAnotherParty fetches the app's token from the fake as a second
// client holding the secret would: WeChat counts it, wxtoken does not.
func (f *quotaFixture) fetchAsAnotherParty(t *testing.T) string {
	t.Helper()
	q := url.Values{"grant_type": {"client_credential"}, "appid": {quotaApp}, "secret": {quotaSecret}}
	resp, err := http.Get(f.wechat.URL + "/cgi-bin/token?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.AccessToken == "" {
		t.Fatalf("another party's fetch failed: %s", body)
	}
	return a.AccessToken
}

// bucket is the token bucket the fixture's replicas write.
func (f *quotaFixture) bucket(t *testing.T, ctx context.Context) jetstream.KeyValue {
	t.Helper()
	b, err := f.js.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ledger returns the app's ledger as the bucket holds it.
func (f *quotaFixture) ledger(t *testing.T, ctx context.Context) kv.Ledger {
	t.Helper()
	e, err := f.bucket(t, ctx).Get(ctx, kv.LedgerKey(quotaApp))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.DecodeLedger(quotaApp, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// awaitPut watches key in the bucket until a value put there is one that
// took accepts; none by the end of ctx fails the test with missing.
func (f *quotaFixture) awaitPut(t *testing.T, ctx context.Context, key string, took func(value []byte) bool, missing string) {
	t.Helper()
	w, err := f.bucket(t, ctx).Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		select {
		case e := <-w.Updates():
			if e != nil && e.Operation() == jetstream.KeyValuePut && took(e.Value()) {
				return
			}
		case <-ctx.Done():
			t.Fatal(missing)
		}
	}
}

// awaitReading waits until the app's ledger holds a reading of path read
// after since that done accepts.
func (f *quotaFixture) awaitReading(t *testing.T, ctx context.Context, path string, since time.Time, done func(kv.QuotaReading) bool) kv.QuotaReading {
	t.Helper()
	var q kv.QuotaReading
	f.awaitPut(t, ctx, kv.LedgerKey(quotaApp), func(value []byte) bool {
		l, err := kv.DecodeLedger(quotaApp, value)
		if err != nil {
			return false
		}
		var ok bool
		q, ok = l.Quota[path]
		return ok && !q.At.Before(since) && done(q)
	}, fmt.Sprintf("no reading of %s after %s came", path, since.Format(time.RFC3339Nano)))
	return q
}

// anyReading accepts any reading awaited.
func anyReading(kv.QuotaReading) bool { return true }

// awaitToken waits until the bucket holds a token of the app other than
// not, and returns it.
func (f *quotaFixture) awaitToken(t *testing.T, ctx context.Context, not string) kv.Credential {
	t.Helper()
	var c kv.Credential
	f.awaitPut(t, ctx, quotaApp, func(value []byte) bool {
		var err error
		c, err = kv.DecodeCredential(quotaApp, value)
		return err == nil && c.Value != not
	}, "no token other than the one held came")
	return c
}

// lead runs a replica of the fixture's app and waits until it leads.
func (f *quotaFixture) lead(t *testing.T, ctx context.Context, instance string, tune ...func(*Config)) quotaReplica {
	t.Helper()
	r := f.run(t, ctx, instance, tune...)
	r.logs.await(t, ctx, "leading: refreshing tokens", 1)
	return r
}

// failures subscribes to the app's failure events.
func (f *quotaFixture) failures(t *testing.T) *nats.Subscription {
	t.Helper()
	failed, err := f.nc.SubscribeSync(kv.Subjects{}.Failed(quotaApp))
	if err != nil {
		t.Fatal(err)
	}
	return failed
}

// nextFailure waits for the next failure event on failed, as long as ctx
// lasts; none fails the test, saying which event was awaited.
func nextFailure(t *testing.T, ctx context.Context, failed *nats.Subscription, awaited string) kv.FailureEvent {
	t.Helper()
	msg, err := failed.NextMsg(time.Until(deadline(ctx)))
	if err != nil {
		t.Fatalf("no failure event%s: %v", awaited, err)
	}
	var ev kv.FailureEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatalf("failure event %s: %v", msg.Data, err)
	}
	return ev
}

// TestForeignFetchIsReportedAndTheTokenRotated: another party fetches the
// app's token. Within one --quota-every the leader reports it once (a
// foreign_fetch event, the ERROR line, the gauge, the ledger's reading and
// Foreign) and rotates the token at once: the new one is valid at WeChat
// while the one the other party's fetch ends is still in its overlap, so
// services never see a 40001 for it. Nothing says invalidated_elsewhere.
func TestForeignFetchIsReportedAndTheTokenRotated(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	failed := f.failures(t)
	leader := f.lead(t, ctx, "leader")
	held := f.awaitToken(t, ctx, "")
	quiet := f.awaitReading(t, ctx, fakewechat.PathToken, f.settled(t, ctx), anyReading)
	if quiet.Others != 0 || quiet.Used != 1 || quiet.Ours != 1 {
		t.Fatalf("reading before any other party: %+v; want used 1, ours 1, others 0", quiet)
	}

	fetched := time.Now()
	f.fetchAsAnotherParty(t)
	// The first reading asked after the other party's fetch counts it:
	// it is seen within one --quota-every.
	seen := f.awaitReading(t, ctx, fakewechat.PathToken, fetched, anyReading)
	if seen.Others != 1 {
		t.Errorf("the first reading after another party's fetch: %+v; want others 1", seen)
	}
	rotated := f.awaitToken(t, ctx, held.Value)
	if ok, code := f.fake.Valid(held.Value); !ok {
		t.Errorf("the old token was already dead (%d) when the new one was stored: the rotation came too late", code)
	}
	if ok, code := f.fake.Valid(rotated.Value); !ok {
		t.Errorf("the token rotated after the foreign fetch does not work: errcode %d", code)
	}

	if ev := nextFailure(t, ctx, failed, ""); ev.Class != kv.ClassForeignFetch || ev.Path != fakewechat.PathToken || ev.Others != 1 || ev.Growth != 1 {
		t.Errorf("failure event %+v; want class foreign_fetch of /cgi-bin/token, others 1, growth 1", ev)
	}
	l := f.ledger(t, ctx)
	if l.Foreign == nil || l.Foreign.Path != fakewechat.PathToken || l.Foreign.Others != 1 || l.Foreign.Count != 1 {
		t.Errorf("ledger's foreign fetch %+v; want /cgi-bin/token, others 1, seen once", l.Foreign)
	}
	if q := l.Quota[fakewechat.PathToken]; q.Others != 1 {
		t.Errorf("ledger's reading %+v; want others 1", q)
	}
	scrape := leader.scrape(t)
	others, limit := value(scrape, "wxtoken_upstream_calls_by_others"), value(scrape, "wxtoken_api_quota_limit")
	used, remaining := value(scrape, "wxtoken_api_quota_used"), value(scrape, "wxtoken_api_quota_remaining")
	if others != 1 || limit != 2000 || used < 2 || used+remaining != limit {
		t.Errorf("token path's gauges: others %g, limit %g, used %g, remaining %g; want others 1, the fake's limit 2000, used at least 2 (ours and the other's), used+remaining = limit",
			others, limit, used, remaining)
	}

	// Readings go on; the same count of others is no new growth.
	f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), anyReading)
	f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), anyReading)
	if msg, err := failed.NextMsg(10 * time.Millisecond); err == nil {
		t.Errorf("a second failure event for one foreign fetch: %s", msg.Data)
	}
	logs := leader.logs.String()
	if n := strings.Count(logs, "another party calls WeChat with this app's AppSecret"); n != 1 {
		t.Errorf("%d ERROR lines about another party; want 1:\n%s", n, logs)
	}
	if strings.Contains(logs, "token ended by another party") || strings.Contains(leader.scrape(t), "wxtoken_tokens_invalidated_elsewhere_total{") {
		t.Errorf("the foreign fetch also fired invalidated_elsewhere:\n%s", logs)
	}
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// TestOthersTolerance is the tolerance's two sides: WeChat's count off by
// up to 1% of used is no other party, and clamps at 0 when ours is more;
// beyond it, the difference is another party's.
func TestOthersTolerance(t *testing.T) {
	for _, c := range []struct {
		used, ours, want int64
	}{
		{used: 0, ours: 0, want: 0},
		{used: 1, ours: 1, want: 0},
		{used: 2, ours: 1, want: 1},       // below 100 calls, one call is seen
		{used: 99, ours: 98, want: 1},     // 1% of 99 rounds down to 0
		{used: 304, ours: 301, want: 0},   // 301 calls reported 1% high
		{used: 305, ours: 301, want: 4},   // beyond 1%
		{used: 1000, ours: 990, want: 0},  // exactly 1%
		{used: 1000, ours: 989, want: 11}, // beyond
		{used: 5, ours: 7, want: 0},       // calls counted before they were made that never reached WeChat
	} {
		if got := othersOf(c.used, c.ours); got != c.want {
			t.Errorf("othersOf(used %d, ours %d) = %d; want %d", c.used, c.ours, got, c.want)
		}
	}
}

// scrape returns what the replica's /metrics would show.
func (q quotaReplica) scrape(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(q.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// value returns the value of the quota app's token path's series of the
// gauge name in a scrape; -1 when absent.
func value(scrape, name string) float64 {
	prefix := name + `{appid="` + quotaApp + `",path="` + fakewechat.PathToken + `"} `
	for _, line := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// TestQuotaSkewWithinToleranceIsNoOtherParty: WeChat's count 1% high on a
// day of 301 fetches (300 counted in the ledger earlier today, as a former
// leader's) reports nothing; one more fetch by another party goes beyond
// the tolerance, and is reported.
func TestQuotaSkewWithinToleranceIsNoOtherParty(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	if err := f.fake.SetQuotaSkew(quotaApp, 0.01); err != nil {
		t.Fatal(err)
	}
	failed := f.failures(t)
	f.lead(t, ctx, "leader")
	f.awaitToken(t, ctx, "")
	f.awaitReading(t, ctx, fakewechat.PathToken, f.settled(t, ctx), func(q kv.QuotaReading) bool { return q.Ours == 1 })

	// 300 fetches of ours earlier today: counted first, then made.
	f.addOurs(t, ctx, "token", 300)
	for range 300 {
		f.fetchAsAnotherParty(t)
	}
	within := f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), anyReading)
	if within.Used != 304 || within.Ours != 301 || within.Others != 0 {
		t.Errorf("301 calls counted 1%% high: %+v; want used 304, ours 301, others 0", within)
	}
	if msg, err := failed.NextMsg(10 * time.Millisecond); err == nil {
		t.Fatalf("a failure event for a count within WeChat's 1%%: %s", msg.Data)
	}

	f.fetchAsAnotherParty(t)
	beyond := f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), anyReading)
	if beyond.Used != 305 || beyond.Others != 4 {
		t.Errorf("one fetch more by another party: %+v; want used 305 and others 4 (beyond the tolerance of 3)", beyond)
	}
	if ev := nextFailure(t, ctx, failed, " beyond the tolerance"); ev.Class != kv.ClassForeignFetch || ev.Others != 4 {
		t.Errorf("failure event %+v; want foreign_fetch, others 4", ev)
	}
}

// addOurs counts n calls under api in the app's ledger today, as a former
// leader would have, with compare-and-swap beside the running leader.
func (f *quotaFixture) addOurs(t *testing.T, ctx context.Context, api string, n int) {
	t.Helper()
	b := f.bucket(t, ctx)
	for {
		e, err := b.Get(ctx, kv.LedgerKey(quotaApp))
		if err != nil {
			t.Fatal(err)
		}
		l, err := kv.DecodeLedger(quotaApp, e.Value())
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			l.Count(api, time.Now(), false)
		}
		data, err := kv.EncodeLedger(l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Update(ctx, kv.LedgerKey(quotaApp), data, e.Revision()); err == nil {
			return
		}
	}
}

// shiftedClock is the real clock from a chosen start, moved on at will: the
// refresher's and the fake's, so that an hour passes at once.
type shiftedClock struct {
	mu    sync.Mutex
	start time.Time // real time when the clock read base
	base  time.Time
	shift time.Duration
}

func newShiftedClock(base time.Time) *shiftedClock {
	return &shiftedClock{start: time.Now(), base: base}
}

func (c *shiftedClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(time.Since(c.start) + c.shift)
}

func (c *shiftedClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shift += d
}

// TestAgentPathsAskedHourly: a path an agent reported for the app is asked
// about at once, then not again before an hour has passed (while the token
// path is asked every --quota-every), then again; a path quota/get cannot
// be asked about (76021) is asked once that day, and logged once.
func TestAgentPathsAskedHourly(t *testing.T) {
	ctx := quotaContext(t)
	// 09:00 China time: an hour and a bit later is the same China day.
	y, m, d := time.Now().In(chinaZone).Date()
	clock := newShiftedClock(time.Date(y, m, d, 9, 0, 0, 0, chinaZone))
	f := newQuotaFixture(t, fakewechat.Config{Now: clock.now})
	leader := f.lead(t, ctx, "leader", func(c *Config) { c.Clock = Clock{Now: clock.now} })
	f.awaitReading(t, ctx, fakewechat.PathToken, time.Time{}, anyReading)

	// The agent's proxy sent 3 messages with the app's token.
	held := f.awaitToken(t, ctx, "")
	for range 3 {
		resp, err := http.Post(f.wechat.URL+fakewechat.PathSendMessage+"?access_token="+held.Value, "application/json", strings.NewReader(`{"touser":"o1","msgtype":"text","text":{"content":"hi"}}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	const unaskable = "/cgi-bin/not/counted/by/wechat"
	report, _ := json.Marshal(kv.UsageReport{Agent: "agent-1", At: time.Now(), Paths: []kv.PathUsage{
		{AppID: quotaApp, Path: fakewechat.PathSendMessage, Calls: 3},
		{AppID: quotaApp, Path: unaskable, Calls: 1},
	}})
	if err := f.nc.Publish(kv.Subjects{}.Usage(), report); err != nil {
		t.Fatal(err)
	}
	first := f.awaitReading(t, ctx, fakewechat.PathSendMessage, time.Time{}, anyReading)
	if first.Used != 3 || first.Others != 0 {
		t.Errorf("the agent's path: %+v; want used 3, and others 0: the agents' calls are not another party's", first)
	}
	leader.logs.await(t, ctx, "quota/get cannot be asked about this API path", 1)

	// Three more rounds of the token path: the agent's path is not asked.
	for range 3 {
		f.awaitReading(t, ctx, fakewechat.PathToken, clock.now(), anyReading)
	}
	if again := f.ledger(t, ctx).Quota[fakewechat.PathSendMessage]; !again.At.Equal(first.At) {
		t.Errorf("the agent's path was asked again %s after the first time; want at most once an hour", again.At.Sub(first.At))
	}

	clock.add(time.Hour)
	f.awaitReading(t, ctx, fakewechat.PathSendMessage, first.At.Add(time.Hour), anyReading)
	for range 2 {
		f.awaitReading(t, ctx, fakewechat.PathToken, clock.now(), anyReading)
	}
	if n := strings.Count(leader.logs.String(), "quota/get cannot be asked about this API path"); n != 1 {
		t.Errorf("the path quota/get cannot be asked about was asked %d times the same day; want once", n)
	}
	if strings.Contains(leader.logs.String(), "another party calls WeChat") {
		t.Errorf("the agents' calls were reported as another party's:\n%s", leader.logs.String())
	}
	if _, ok := f.ledger(t, ctx).Quota[unaskable]; ok {
		t.Error("the ledger holds a reading of a path quota/get refused")
	}
}

// TestLeadersOwnFetchesAreNoOtherParty: the leader's own rotations, and
// those of the replica that takes over from it, are counted in the ledger
// and give others 0: no false report across a failover. The standby asks
// nothing while it stands by, and the former leader's gauges go with its
// term.
func TestLeadersOwnFetchesAreNoOtherParty(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	failed := f.failures(t)
	first := f.lead(t, ctx, "first")
	held := f.awaitToken(t, ctx, "")
	second := f.run(t, ctx, "second")
	second.logs.await(t, ctx, "standing by", 1)

	if !first.r.creds.Rotate(quotaApp, false, kv.ReasonRequested) {
		t.Fatal("no rotation started on the leader")
	}
	held = f.awaitToken(t, ctx, held.Value)
	f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), func(q kv.QuotaReading) bool { return q.Used == 2 })
	if strings.Contains(second.scrape(t), "wxtoken_api_quota_") {
		t.Error("the standby has readings of quota/get: it asked WeChat while standing by")
	}

	first.stop()
	second.logs.await(t, ctx, "leading: refreshing tokens", 1)
	if strings.Contains(first.scrape(t), "wxtoken_api_quota_") {
		t.Error("the former leader still shows its readings: gauges that no longer move")
	}
	if !second.r.creds.Rotate(quotaApp, false, kv.ReasonRequested) {
		t.Fatal("no rotation started on the new leader")
	}
	f.awaitToken(t, ctx, held.Value)
	after := f.awaitReading(t, ctx, fakewechat.PathToken, time.Now(), func(q kv.QuotaReading) bool { return q.Used == 3 })
	if after.Ours != 3 || after.Others != 0 {
		t.Errorf("after a failover and three fetches of the leaders': %+v; want ours 3, others 0", after)
	}
	if msg, err := failed.NextMsg(10 * time.Millisecond); err == nil {
		t.Errorf("a failure event for the leaders' own fetches: %s", msg.Data)
	}
	if f.ledger(t, ctx).Foreign != nil {
		t.Error("the ledger records a foreign fetch of the leaders' own")
	}
}

// callStableAsAnotherParty calls stable_token as a second client holding
// the secret would, forced or not.
func (f *quotaFixture) callStableAsAnotherParty(t *testing.T, force bool) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": quotaApp, "secret": quotaSecret, "force_refresh": force})
	resp, err := http.Post(f.wechat.URL+"/cgi-bin/stable_token", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(answer), "access_token") {
		t.Fatalf("another party's stable_token call failed: %s", answer)
	}
}

// TestForeignStableTokenCallIsCheckedFirst: another party's calls to
// stable_token are reported, but a call in normal mode ends nothing: the
// held token is checked, and kept; a forced one ends it: it is checked,
// found dead and rotated, and blamed on nobody a second time.
func TestForeignStableTokenCallIsCheckedFirst(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	leader := f.lead(t, ctx, "leader", func(c *Config) { c.Apps[0].TokenAPI = TokenAPIStable })
	held := f.awaitToken(t, ctx, "")
	f.awaitReading(t, ctx, fakewechat.PathStableToken, f.settled(t, ctx), anyReading)

	f.callStableAsAnotherParty(t, false)
	leader.logs.await(t, ctx, "WeChat says the token still works, not rotating", 1)
	if ok, _ := f.fake.Valid(held.Value); !ok {
		t.Fatal("a normal-mode stable_token call ended the token")
	}

	f.callStableAsAnotherParty(t, true)
	rotated := f.awaitToken(t, ctx, held.Value)
	if ok, code := f.fake.Valid(rotated.Value); !ok {
		t.Errorf("the token stored after another party's forced refresh does not work: errcode %d", code)
	}
	f.awaitReading(t, ctx, fakewechat.PathStableToken, time.Time{}, func(q kv.QuotaReading) bool { return q.Others == 2 })
	leader.logs.await(t, ctx, "another party calls WeChat with this app's AppSecret", 2) // logged once the reading is stored
	if l := f.ledger(t, ctx); l.Foreign == nil || l.Foreign.Count != 2 || l.Foreign.Others != 2 {
		t.Errorf("ledger's foreign fetch %+v; want seen twice, 2 calls by others", l.Foreign)
	}
	logs := leader.logs.String()
	if n := strings.Count(logs, "another party calls WeChat with this app's AppSecret"); n != 2 {
		t.Errorf("%d ERROR lines about another party; want one per call seen:\n%s", n, logs)
	}
	if strings.Contains(logs, "token ended by another party") {
		t.Errorf("the forced refresh another party made was also reported as invalidated_elsewhere:\n%s", logs)
	}
}

// TestReadingsOfAgentsPathsAreBounded: an app whose agents call many API
// paths keeps the newest readings of them, and every reading of a path
// that issues its credentials, so that its ledger stays one value of the
// bucket.
func TestReadingsOfAgentsPathsAreBounded(t *testing.T) {
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	l := kv.Ledger{AppID: "wx1234567890abcdef", Quota: map[string]kv.QuotaReading{}}
	l.Count("token", at, true)
	issuing := map[string]bool{"/cgi-bin/token": true}
	l.Quota["/cgi-bin/token"] = kv.QuotaReading{At: at.Add(-time.Hour), DailyLimit: 2000, Used: 1}
	for i := range 200 {
		l.Quota[fmt.Sprintf("/cgi-bin/api/number/%03d", i)] = kv.QuotaReading{At: at.Add(time.Duration(i) * time.Second), DailyLimit: 100000, Used: 123456, Remain: 1}
		keepReadings(l.Quota, func(path string) bool { return issuing[path] })
	}
	if _, err := kv.EncodeLedger(l); err != nil {
		t.Fatalf("the ledger with the readings kept: %v", err)
	}
	if len(l.Quota) != maxAgentReadings+1 {
		t.Errorf("%d readings kept, want %d of the agents' paths and the token's", len(l.Quota), maxAgentReadings)
	}
	if _, ok := l.Quota["/cgi-bin/token"]; !ok {
		t.Error("the token path's reading, the oldest, was dropped")
	}
	if _, ok := l.Quota["/cgi-bin/api/number/199"]; !ok {
		t.Error("the newest reading was dropped")
	}
	if _, ok := l.Quota[fmt.Sprintf("/cgi-bin/api/number/%03d", 199-maxAgentReadings)]; ok {
		t.Error("a reading older than the newest kept was kept")
	}
}

// TestANewLeaderShowsTheLastReadingsAtOnce: the replica that takes over
// sets the gauges from today's readings in the ledger as its term starts,
// though it asks nothing again before --quota-every (an hour here): the
// gauges, and the alerts on them, do not go away for that hour.
func TestANewLeaderShowsTheLastReadingsAtOnce(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	hourly := func(c *Config) { c.QuotaEvery = time.Hour }
	first := f.lead(t, ctx, "first", hourly)
	f.awaitToken(t, ctx, "")
	reading := f.awaitReading(t, ctx, fakewechat.PathToken, time.Now().Add(-time.Minute), anyReading)
	second := f.run(t, ctx, "second", hourly)
	second.logs.await(t, ctx, "standing by", 1)
	calls := f.fake.QuotaUsed(quotaApp, fakewechat.PathQuotaGet)

	first.stop()
	second.logs.await(t, ctx, "leading: refreshing tokens", 1)
	want := fmt.Sprintf(`wxtoken_api_quota_limit{appid="%s",path="/cgi-bin/token"} %d`, quotaApp, reading.DailyLimit)
	for !strings.Contains(second.scrape(t), want) {
		select {
		case <-ctx.Done():
			t.Fatalf("the new leader does not show the last reading:\n%s", second.scrape(t))
		case <-time.After(10 * time.Millisecond): // polling the metrics for the gauge to appear
		}
	}
	if n := f.fake.QuotaUsed(quotaApp, fakewechat.PathQuotaGet); n != calls {
		t.Errorf("the new leader asked quota/get %d times within the hour; the gauges came from the ledger, not from asking", n-calls)
	}
}

// TestALedgerBegunTodayTakesItsFirstReadingAsTheBaseline: the app's
// ledger is lost (the key deleted, as a bucket's loss would) and the
// replica that writes it again knows nothing of the day's calls before:
// WeChat's count is then more than the new ledger's, by the refresher's
// own earlier calls. The first reading is the day's baseline, not another
// party's fetch; a real one after it is reported.
func TestALedgerBegunTodayTakesItsFirstReadingAsTheBaseline(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	failed := f.failures(t)
	first := f.lead(t, ctx, "first")
	held := f.awaitToken(t, ctx, "")
	f.awaitReading(t, ctx, fakewechat.PathToken, time.Time{}, func(q kv.QuotaReading) bool { return q.Used == 1 })
	first.stop()

	if err := f.bucket(t, ctx).Delete(ctx, kv.LedgerKey(quotaApp)); err != nil { // lost
		t.Fatal(err)
	}
	second := f.lead(t, ctx, "second")
	if !second.r.creds.Rotate(quotaApp, false, kv.ReasonRequested) { // written again, by a replica that never saw it
		t.Fatal("no rotation started")
	}
	f.awaitToken(t, ctx, held.Value)
	// Readings in the new ledger's first moments set the baseline; one
	// taken after them is judged against it.
	settled := f.ledger(t, ctx).Since.Add(2 * time.Second) // twice the fixture's --upstream-timeout
	baseline := f.awaitReading(t, ctx, fakewechat.PathToken, settled, func(q kv.QuotaReading) bool { return q.Used == 2 })
	if baseline.Ours != 1 || baseline.Others != 1 {
		t.Fatalf("the ledger written again: %+v; want ours 1 and others 1, the call the lost ledger counted (the test's premise)", baseline)
	}
	if f.ledger(t, ctx).Foreign != nil || strings.Contains(second.logs.String(), "another party calls WeChat") {
		t.Errorf("the refresher's own calls before the ledger was lost were reported as another party's:\n%s", second.logs.String())
	}

	fetched := time.Now()
	f.fetchAsAnotherParty(t)
	f.awaitReading(t, ctx, fakewechat.PathToken, fetched, func(q kv.QuotaReading) bool { return q.Used == 3 })
	if ev := nextFailure(t, ctx, failed, " for the foreign fetch after the baseline"); ev.Class != kv.ClassForeignFetch || ev.Growth != 1 {
		t.Errorf("event %+v, want a foreign_fetch of growth 1", ev)
	}
}
