package publisher

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

const rescueApp, rescueSecret = "wxrescue0000000001", "the-secret-of-the-rescued-app"

// shiftedNow is a clock that runs with the wall's, shifted by offset.
type shiftedNow struct{ offset atomic.Int64 }

func (c *shiftedNow) now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// at shifts the clock so that it reads China time hh:mm today.
func (c *shiftedNow) at(hh, mm int) {
	china := time.FixedZone("UTC+8", 8*60*60)
	n := time.Now().In(china)
	target := time.Date(n.Year(), n.Month(), n.Day(), hh, mm, 0, 0, china)
	c.offset.Store(int64(time.Until(target)))
}

func (c *shiftedNow) advance(d time.Duration) { c.offset.Add(int64(d)) }

// rescueWorld is a refresher of rescueApp against a fake WeChat on a
// shifted clock, whose day's token quota is one fetch: the first fetch
// works, the next gets 45009. (platformrescue_test.go makes one of a
// platform's credential.)
type rescueWorld struct {
	key      string // the credential whose quota is spent
	quotaApp string // whose ledger and metrics count its resets
	fake     *fakewechat.Server
	clock    *shiftedNow
	bucket   jetstream.KeyValue
	logs     *awaitedLog
	reg      *prometheus.Registry
	events   chan *nats.Msg
	first    string // the first token stored
	hook     string // a platform's authorization-event URL (platformrescue_test.go)
}

// newRescueWorld starts it at China time hh:mm, with the fake set up by
// prepare and the refresher's Config by tune; it returns once the first
// token is stored.
func newRescueWorld(t *testing.T, ctx context.Context, hh, mm int, prepare func(*fakewechat.Server), tune func(*Config)) *rescueWorld {
	t.Helper()
	w := &rescueWorld{key: rescueApp, quotaApp: rescueApp, clock: &shiftedNow{}, reg: prometheus.NewRegistry(), events: make(chan *nats.Msg, 64)}
	w.clock.at(hh, mm)
	w.fake = fakewechat.New(fakewechat.Config{Now: w.clock.now})
	w.fake.AddApp(rescueApp, rescueSecret)
	w.fake.SetQuotaLimit(rescueApp, fakewechat.PathToken, 1)
	if prepare != nil {
		prepare(w.fake)
	}
	wechat := httptest.NewServer(w.fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv.ClientURL())
	sub, err := nc.ChanSubscribe(kv.Subjects{}.Failed(rescueApp), w.events)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	_, w.logs, _ = runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, App{AppID: rescueApp, Secret: NewSecret(rescueSecret)}, "r1", "", w.config(tune))
	w.logs.await(t, ctx, "became leader", 1)
	w.bucket = awaitBucket(t, ctx, js, kv.DefaultBucket)
	w.first = w.awaitToken(t, ctx, "")
	return w
}

// config is the refresher's Config of the world, tuned by tune: checks
// every second, the default reserve, its metrics and its clock.
func (w *rescueWorld) config(tune func(*Config)) func(*Config) {
	return func(c *Config) {
		c.Schedule = "@every 1s"
		c.QuotaClearReserve = DefaultQuotaClearReserve
		c.Registerer = w.reg
		c.Clock = Clock{Now: w.clock.now}
		if tune != nil {
			tune(c)
		}
	}
}

// awaitBucket returns the bucket name once it is created.
func awaitBucket(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) jetstream.KeyValue {
	t.Helper()
	for {
		if b, err := js.KeyValue(ctx, name); err == nil {
			return b
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no bucket %s", name)
		case <-time.After(10 * time.Millisecond): // polling for the bucket's creation, not waiting for an outcome
		}
	}
}

// awaitToken waits until the bucket holds a token of the credential other
// than old ("" for any), and returns it.
func (w *rescueWorld) awaitToken(t *testing.T, ctx context.Context, old string) string {
	t.Helper()
	watch, err := w.bucket.Watch(ctx, w.key)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()
	for {
		select {
		case e := <-watch.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if rec, err := kv.DecodeCredential(w.key, e.Value()); err == nil && rec.Value != old {
				return rec.Value
			}
		case <-ctx.Done():
			t.Fatalf("no new token stored:\n%s", w.logs.String())
		}
	}
}

// dueNow moves the clock to 5 minutes before the token's expiry: inside
// the refresh window, so the next check fetches.
func (w *rescueWorld) dueNow() { w.clock.advance(2*time.Hour - 5*time.Minute) }

// awaitEvent returns the next failure event that keep accepts.
func (w *rescueWorld) awaitEvent(t *testing.T, ctx context.Context, keep func(kv.FailureEvent) bool) kv.FailureEvent {
	t.Helper()
	for {
		select {
		case m := <-w.events:
			var ev kv.FailureEvent
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				t.Fatal(err)
			}
			if keep(ev) {
				return ev
			}
		case <-ctx.Done():
			t.Fatalf("no such failure event:\n%s", w.logs.String())
		}
	}
}

// ledger reads the ledger of the app whose quota is spent from the bucket.
func (w *rescueWorld) ledger(t *testing.T, ctx context.Context) kv.Ledger {
	t.Helper()
	return w.ledgerOf(t, ctx, w.quotaApp)
}

// ledgerOf reads appid's ledger from the bucket.
func (w *rescueWorld) ledgerOf(t *testing.T, ctx context.Context, appid string) kv.Ledger {
	t.Helper()
	e, err := w.bucket.Get(ctx, kv.LedgerKey(appid))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.DecodeLedger(appid, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// counter is the value of the metric name of the app whose quota is spent
// with api and, for a counter, outcome; 0 if none.
func (w *rescueWorld) counter(t *testing.T, name string, api string, outcome ...string) float64 {
	t.Helper()
	families, err := w.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		want := map[string]string{"appid": w.quotaApp, "api": api}
		if len(outcome) > 0 {
			want["outcome"] = outcome[0]
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func isRescue(ev kv.FailureEvent) bool { return ev.Rescue != "" }

// TestSpentQuotaRescuedOnceAndFetchedAgain: at 15:00 China time the day's
// token quota is spent while the token held expires at 17:00. The rescue
// resets the one path (quota/clear), counts it in the ledger before the
// call, says so (event, metric, ledger), and the token is fetched at once.
// When the quota runs out again the same day, no second reset is made.
func TestSpentQuotaRescuedOnceAndFetchedAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newRescueWorld(t, ctx, 15, 0, nil, nil)
	w.dueNow()

	ev := w.awaitEvent(t, ctx, isRescue)
	if ev.Rescue != "rescued" || ev.ResetAPI != "quota_clear" || ev.Path != "/cgi-bin/token" || ev.Class != "quota" ||
		ev.BudgetRemaining == nil || *ev.BudgetRemaining != 49 {
		t.Fatalf("rescue event %+v, want rescued by quota_clear of /cgi-bin/token with 49 left", ev)
	}
	w.awaitToken(t, ctx, w.first) // fetched again at once
	if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAPI); n != 1 {
		t.Errorf("WeChat saw %d quota/clear calls, want 1", n)
	}
	if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAccount); n != 0 {
		t.Errorf("WeChat saw %d account resets, want 0", n)
	}
	l := w.ledger(t, ctx)
	day := w.clock.now().In(time.FixedZone("", 8*3600)).Format(time.DateOnly)
	if l.MonthCalls["quota_clear"] != 1 || l.Rescue == nil || l.Rescue.Outcome != "rescued" || l.Rescue.Count != 1 || l.Rescue.Rescued["/cgi-bin/token"] != day {
		t.Errorf("ledger %+v, rescue %+v: want one quota_clear counted and the rescue of %s recorded", l.MonthCalls, l.Rescue, day)
	}
	if got := w.counter(t, "wxtoken_quota_rescues_total", "quota_clear", "rescued"); got != 1 {
		t.Errorf("wxtoken_quota_rescues_total{quota_clear,rescued} %v, want 1", got)
	}
	if got := w.counter(t, "wxtoken_quota_clear_budget_remaining", "quota_clear"); got != 49 {
		t.Errorf("wxtoken_quota_clear_budget_remaining{quota_clear} %v, want 49", got)
	}

	// The quota runs out again (the limit is one fetch, spent by the
	// fetch after the reset): the same day, no second reset.
	w.dueNow()
	again := w.awaitEvent(t, ctx, isRescue)
	if again.Rescue != "again" || again.Class != "quota" {
		t.Fatalf("second 45009 of the day: event %+v, want the rescue refused as again", again)
	}
	if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAPI) + w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAccount); n != 1 {
		t.Errorf("WeChat saw %d resets, want still 1", n)
	}
	w.logs.await(t, ctx, "is spent (45009) and not rescued: a rescue of it was tried once today already", 1)
}

// TestQuotaNotRescuedWhenTheTokenOutlastsTheDay: at 23:30 China time the
// quota is spent, but the token held expires after midnight, when the
// quota resets by itself: no reset is spent.
func TestQuotaNotRescuedWhenTheTokenOutlastsTheDay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newRescueWorld(t, ctx, 22, 40, nil, func(c *Config) { c.RefreshBefore = time.Hour })
	w.clock.advance(time.Hour) // 23:40: due (the token expires at 00:40), and the quota is spent
	ev := w.awaitEvent(t, ctx, func(ev kv.FailureEvent) bool { return ev.Class == "quota" })
	if ev.Rescue != "" || ev.ErrCode != 45009 {
		t.Fatalf("first quota event %+v, want the fetch's 45009 and no rescue", ev)
	}
	if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAPI) + w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAccount); n != 0 {
		t.Errorf("WeChat saw %d resets, want none", n)
	}
	if l := w.ledger(t, ctx); l.Rescue != nil || l.MonthCalls["quota_clear"] != 0 {
		t.Errorf("ledger %+v, rescue %+v: want no reset counted", l.MonthCalls, l.Rescue)
	}
}

// TestQuotaRescueFallsThrough: each reset that cannot help hands on to the
// next, in order, and each refusal that needs a person is said once.
func TestQuotaRescueFallsThrough(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prepare  func(*fakewechat.Server)
		tune     func(*Config)
		before   func(*rescueWorld) // once the first token is stored
		outcome  string             // of the rescue's event
		api      string             // the reset it names
		class    string
		calls    map[string]int // the ledger's month calls of the resets
		clears   int            // account resets WeChat saw, console included
		apiClear int            // quota/clear resets WeChat saw
		log      string
	}{
		{name: "76021 hands on to clear_quota",
			prepare: func(f *fakewechat.Server) { f.RefuseClear(fakewechat.PathToken, 76021) },
			outcome: "rescued", api: "clear_quota", class: "quota",
			calls: map[string]int{"quota_clear": 1, "clear_quota": 1}, clears: 1,
			log: "quota reset not made or refused; trying the next"},
		{name: "a token refused hands on to clear_quota/v2, which needs none",
			before:  func(w *rescueWorld) { w.fake.Revoke(w.first) },
			outcome: "rescued", api: "clear_quota_v2", class: "quota",
			calls: map[string]int{"quota_clear": 1, "clear_quota": 1, "clear_quota_v2": 1}, clears: 1,
			log: "quota reset not made or refused; trying the next"},
		{name: "48006 on clear_quota: the month's resets spent in the console",
			prepare: func(f *fakewechat.Server) {
				f.RefuseClear(fakewechat.PathToken, 76021)
				for range 10 {
					if err := f.ConsoleClear(rescueApp); err != nil {
						panic(err)
					}
				}
			},
			outcome: "spent_elsewhere", api: "clear_quota", class: "quota",
			calls: map[string]int{"quota_clear": 1, "clear_quota": 1}, clears: 10,
			log: "this month's resets are spent, by the console or another tool"},
		{name: "the budget at the reserve: no call",
			prepare: func(f *fakewechat.Server) { f.RefuseClear(fakewechat.PathToken, 76022) },
			tune:    func(c *Config) { c.QuotaClearReserve = 10 },
			outcome: "reserve", api: "clear_quota", class: "quota",
			calls: map[string]int{"quota_clear": 1}, clears: 0,
			log: "The resets kept for the console by --quota-clear-reserve are left"},
		{name: "rescue off",
			tune:    func(c *Config) { c.QuotaRescueOff = true },
			outcome: "off", api: "", class: "quota",
			calls: map[string]int{},
			log:   "rescue is off (--quota-rescue=false)"},
		{name: "an unverified account: a config event, once",
			prepare: func(f *fakewechat.Server) { f.SetVerified(rescueApp, false) },
			outcome: "unverified", api: "quota_clear", class: "config",
			calls: map[string]int{"quota_clear": 1},
			log:   "only verified (认证) accounts can"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			w := newRescueWorld(t, ctx, 15, 0, tc.prepare, tc.tune)
			if tc.before != nil {
				tc.before(w)
			}
			w.dueNow()
			ev := w.awaitEvent(t, ctx, isRescue)
			if ev.Rescue != tc.outcome || ev.ResetAPI != tc.api || ev.Class != tc.class {
				t.Errorf("rescue event %+v, want %s by %q, class %s", ev, tc.outcome, tc.api, tc.class)
			}
			// The fetch's own failure comes after the rescue's event: by
			// then the rescue is over.
			fetch := w.awaitEvent(t, ctx, func(ev kv.FailureEvent) bool { return ev.Rescue == "" })
			if tc.outcome == "rescued" {
				w.awaitToken(t, ctx, w.first)
			} else if fetch.ErrCode != 45009 || fetch.NextAttempt.Before(w.clock.now().Add(time.Hour)) {
				t.Errorf("fetch's failure %+v: want 45009 and no attempt before midnight", fetch)
			}
			l := w.ledger(t, ctx)
			for _, api := range []string{"quota_clear", "clear_quota", "clear_quota_v2"} {
				if l.MonthCalls[api] != tc.calls[api] {
					t.Errorf("ledger counts %d %s calls, want %d (all: %v)", l.MonthCalls[api], api, tc.calls[api], l.MonthCalls)
				}
			}
			if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAccount); n != tc.clears {
				t.Errorf("WeChat saw %d account resets, want %d", n, tc.clears)
			}
			if n := w.fake.ClearsThisMonth(rescueApp, fakewechat.ClearAPI); n != tc.apiClear {
				t.Errorf("WeChat saw %d quota/clear resets, want %d", n, tc.apiClear)
			}
			if !strings.Contains(w.logs.String(), tc.log) {
				t.Errorf("the log lacks %q:\n%s", tc.log, w.logs.String())
			}
			label := tc.api
			if label == "" {
				label = "none"
			}
			if got := w.counter(t, "wxtoken_quota_rescues_total", label, tc.outcome); got != 1 {
				t.Errorf("wxtoken_quota_rescues_total{%s,%s} %v, want 1", label, tc.outcome, got)
			}
			if strings.Contains(w.logs.String(), rescueSecret) {
				t.Error("the log holds the AppSecret")
			}
			if tc.outcome == "unverified" {
				if l.Rescue == nil || l.Rescue.Unverified == "" {
					t.Errorf("ledger's rescue %+v: want the unverified month recorded", l.Rescue)
				}
				if n := strings.Count(w.logs.String(), "only verified (认证) accounts can"); n != 1 {
					t.Errorf("%d ERROR lines of the unverified account, want 1", n)
				}
			}
		})
	}
}
