package publisher

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

const (
	rescuePlatform, rescuePlatformSecret = "wxrescue00000000c0", "the-secret-of-the-rescued-platform"
	rescueAuthorizer                     = "wxrescue00000000a1"
	rescueAuthorizer2                    = "wxrescue00000000a2"
)

// newPlatformRescueWorld is a rescueWorld of a platform and its one
// authorizer, at 15:00 China time: the platform's day's quota of spent
// (a component path) is one fetch, and key is the credential watched (the
// platform's component token, or the authorizer's token). It returns once
// key's first token is stored. more are more authorizers of the platform.
func newPlatformRescueWorld(t *testing.T, ctx context.Context, spent, key string, prepare func(*fakewechat.Server), tune func(*Config), more ...string) *rescueWorld {
	t.Helper()
	w := &rescueWorld{key: key, quotaApp: rescuePlatform, clock: &shiftedNow{}, reg: prometheus.NewRegistry(), events: make(chan *nats.Msg, 64)}
	w.clock.at(15, 0)
	w.fake = fakewechat.New(fakewechat.Config{Now: w.clock.now})
	if err := w.fake.AddPlatform(rescuePlatform, rescuePlatformSecret, "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	w.fake.SetQuotaLimit(rescuePlatform, spent, 1)
	if prepare != nil {
		prepare(w.fake)
	}
	wechat := httptest.NewServer(w.fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv.ClientURL())
	// The account authorized the platform before wxtoken ran.
	platforms, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for _, authorizer := range append([]string{rescueAuthorizer}, more...) {
		refresh, err := w.fake.GrantRefreshToken(rescuePlatform, authorizer)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := kv.UpdateAuthorizer(ctx, platforms, rescuePlatform, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
			return kv.Authorizer{RefreshToken: refresh, IssuedAt: w.clock.now()}, true
		}); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := nc.ChanSubscribe(kv.Subjects{}.Failed(key), w.events)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	app := App{AppID: rescuePlatform, Secret: NewSecret(rescuePlatformSecret), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, logs, _ := runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "r1", "", w.config(tune))
	w.logs = logs
	w.logs.await(t, ctx, "became leader", 1)
	hook := httptest.NewServer(r.Callback())
	t.Cleanup(hook.Close)
	w.hook = hook.URL
	if _, answer, err := w.fake.PushTicket(ctx, w.hook, rescuePlatform); err != nil || answer != "success" {
		t.Fatalf("verify ticket push: %q, %v", answer, err)
	}
	w.bucket = awaitBucket(t, ctx, js, kv.DefaultBucket)
	w.first = w.awaitToken(t, ctx, "")
	return w
}

// noSecretLogged fails t if the log holds the platform's secret or the
// authorizer's refresh token.
func (w *rescueWorld) noSecretLogged(t *testing.T) {
	t.Helper()
	logs := w.logs.String()
	if strings.Contains(logs, rescuePlatformSecret) {
		t.Error("the log holds the platform's secret")
	}
	if refresh := w.fake.RefreshToken(rescuePlatform, rescueAuthorizer); refresh != "" && strings.Contains(logs, refresh) {
		t.Error("the log holds the authorizer's refresh token")
	}
}

// TestPlatformSpentQuotaRescuedOnceAndFetchedAgain: at 15:00 China time
// the platform's day's quota of api_component_token (or of
// api_authorizer_token, which WeChat counts against the platform) is
// spent while the token held expires at 17:00. The platform's path is
// reset with the component token (quota/clear), counted in the
// platform's ledger, said on the fetched credential's subject, and the
// token is fetched again at once. No reset of the authorizer's own is
// made. A second 45009 the same day is not rescued again.
func TestPlatformSpentQuotaRescuedOnceAndFetchedAgain(t *testing.T) {
	for _, tc := range []struct {
		name, spent, key string
	}{
		{"the component token", fakewechat.PathComponentToken, rescuePlatform},
		{"an authorizer's token", fakewechat.PathAuthorizerTok, rescueAuthorizer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			w := newPlatformRescueWorld(t, ctx, tc.spent, tc.key, nil, nil)
			w.dueNow()

			ev := w.awaitEvent(t, ctx, isRescue)
			if ev.Rescue != "rescued" || ev.ResetAPI != "quota_clear" || ev.Path != tc.spent || ev.AppID != tc.key ||
				ev.BudgetRemaining == nil || *ev.BudgetRemaining != 49 {
				t.Fatalf("rescue event %+v, want %s's rescued by quota_clear of %s with 49 left", ev, tc.key, tc.spent)
			}
			w.awaitToken(t, ctx, w.first)
			if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAPI); n != 1 {
				t.Errorf("WeChat saw %d quota/clear calls of the platform, want 1", n)
			}
			if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAccount) + w.fake.ClearsThisMonth(rescueAuthorizer, fakewechat.ClearAccount); n != 0 {
				t.Errorf("WeChat saw %d account resets, want 0", n)
			}
			l := w.ledger(t, ctx)
			day := w.clock.now().In(time.FixedZone("", 8*3600)).Format(time.DateOnly)
			if l.MonthCalls["quota_clear"] != 1 || l.Rescue == nil || l.Rescue.Outcome != "rescued" || l.Rescue.Rescued[tc.spent] != day {
				t.Errorf("platform's ledger %+v, rescue %+v: want one quota_clear counted and the rescue of %s recorded", l.MonthCalls, l.Rescue, tc.spent)
			}
			if tc.key == rescueAuthorizer {
				if a := w.ledgerOf(t, ctx, rescueAuthorizer); a.PathResets()+a.AccountResets() != 0 || a.Rescue != nil {
					t.Errorf("authorizer's ledger %+v, rescue %+v: want no reset counted there", a.MonthCalls, a.Rescue)
				}
				if line := "appid=" + rescueAuthorizer + " cgi_path=" + tc.spent + " quota_app=" + rescuePlatform + " reset=quota_clear"; !strings.Contains(w.logs.String(), line) {
					t.Errorf("the log lacks %q, the rescue naming the platform whose quota it is:\n%s", line, w.logs.String())
				}
			}
			if got := w.counter(t, "wxtoken_quota_rescues_total", "quota_clear", "rescued"); got != 1 {
				t.Errorf("wxtoken_quota_rescues_total{appid=platform,quota_clear,rescued} %v, want 1", got)
			}

			w.dueNow()
			if again := w.awaitEvent(t, ctx, isRescue); again.Rescue != "again" {
				t.Fatalf("second 45009 of the day: event %+v, want the rescue refused as again", again)
			}
			if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAPI) + w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAccount); n != 1 {
				t.Errorf("WeChat saw %d resets of the platform, want still 1", n)
			}
			w.noSecretLogged(t)
		})
	}
}

// TestPlatformQuotaRescueFallsThrough: a platform's resets hand on in
// order (quota/clear, component/clear_quota, component/clear_quota/v2),
// each counted in the platform's ledger against the platform's budgets
// (the account's 10, less the reserve, shared by both component resets),
// and each refusal that needs a person is said.
func TestPlatformQuotaRescueFallsThrough(t *testing.T) {
	for _, tc := range []struct {
		name, spent, key string
		prepare          func(*fakewechat.Server)
		tune             func(*Config)
		before           func(*rescueWorld)
		outcome, api     string         // the event's; api is the budget's name when a budget decided
		metric           string         // the reset the metric counts the outcome of ("": api)
		budget           int            // remaining, in the event
		calls            map[string]int // the platform's ledger's month calls of the resets
		clears           int            // the platform's account resets WeChat saw
		log              string
	}{
		{name: "76021 hands on to component/clear_quota", spent: fakewechat.PathComponentToken, key: rescuePlatform,
			prepare: func(f *fakewechat.Server) { f.RefuseClear(fakewechat.PathComponentToken, 76021) },
			outcome: "rescued", api: "component_clear_quota", budget: 6,
			calls: map[string]int{"quota_clear": 1, "component_clear_quota": 1}, clears: 1,
			log: "quota reset not made or refused; trying the next"},
		{name: "a component token refused hands on to component/clear_quota/v2, which needs the secret", spent: fakewechat.PathComponentToken, key: rescuePlatform,
			before:  func(w *rescueWorld) { w.fake.Revoke(w.first) },
			outcome: "rescued", api: "component_clear_quota_v2", budget: 5,
			calls: map[string]int{"quota_clear": 1, "component_clear_quota": 1, "component_clear_quota_v2": 1}, clears: 1,
			log: "quota reset not made or refused; trying the next"},
		{name: "an authorizer's: the platform's budget at the reserve, no call", spent: fakewechat.PathAuthorizerTok, key: rescueAuthorizer,
			prepare: func(f *fakewechat.Server) { f.RefuseClear(fakewechat.PathAuthorizerTok, 76022) },
			tune:    func(c *Config) { c.QuotaClearReserve = 10 },
			outcome: "reserve", api: "clear_quota", metric: "component_clear_quota_v2", budget: 0,
			calls: map[string]int{"quota_clear": 1},
			log:   "The resets kept for the console by --quota-clear-reserve are left"},
		{name: "48006: the platform's resets spent in the console", spent: fakewechat.PathComponentToken, key: rescuePlatform,
			prepare: func(f *fakewechat.Server) {
				f.RefuseClear(fakewechat.PathComponentToken, 76021)
				for range 10 {
					if err := f.ConsoleClear(rescuePlatform); err != nil {
						panic(err)
					}
				}
			},
			outcome: "spent_elsewhere", api: "clear_quota", metric: "component_clear_quota", budget: 6,
			calls: map[string]int{"quota_clear": 1, "component_clear_quota": 1}, clears: 10,
			log: "this month's resets are spent, by the console or another tool"},
		{name: "an unverified platform: a config event, said once", spent: fakewechat.PathComponentToken, key: rescuePlatform,
			prepare: func(f *fakewechat.Server) { f.SetVerified(rescuePlatform, false) },
			outcome: "unverified", api: "quota_clear",
			calls: map[string]int{"quota_clear": 1},
			log:   "only verified (认证) accounts can"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			w := newPlatformRescueWorld(t, ctx, tc.spent, tc.key, tc.prepare, tc.tune)
			if tc.before != nil {
				tc.before(w)
			}
			w.dueNow()
			ev := w.awaitEvent(t, ctx, isRescue)
			if ev.Rescue != tc.outcome || ev.ResetAPI != tc.api {
				t.Errorf("rescue event %+v, want %s by %q", ev, tc.outcome, tc.api)
			}
			if tc.outcome != "unverified" && (ev.BudgetRemaining == nil || *ev.BudgetRemaining != tc.budget) {
				t.Errorf("rescue event's budget_remaining %v, want %d", ev.BudgetRemaining, tc.budget)
			}
			w.awaitEvent(t, ctx, func(ev kv.FailureEvent) bool { return ev.Rescue == "" }) // the fetch's own: the rescue is over
			if tc.outcome == "rescued" {
				w.awaitToken(t, ctx, w.first)
			}
			l := w.ledger(t, ctx)
			for _, api := range []string{"quota_clear", "component_clear_quota", "component_clear_quota_v2", "clear_quota", "clear_quota_v2"} {
				if l.MonthCalls[api] != tc.calls[api] {
					t.Errorf("platform's ledger counts %d %s calls, want %d (all: %v)", l.MonthCalls[api], api, tc.calls[api], l.MonthCalls)
				}
			}
			if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAccount); n != tc.clears {
				t.Errorf("WeChat saw %d account resets of the platform, want %d", n, tc.clears)
			}
			if n := w.fake.ClearsThisMonth(rescueAuthorizer, fakewechat.ClearAccount); n != 0 {
				t.Errorf("WeChat saw %d account resets of the authorizer, want 0", n)
			}
			if !strings.Contains(w.logs.String(), tc.log) {
				t.Errorf("the log lacks %q:\n%s", tc.log, w.logs.String())
			}
			metric := tc.metric
			if metric == "" {
				metric = tc.api
			}
			if got := w.counter(t, "wxtoken_quota_rescues_total", metric, tc.outcome); got != 1 {
				t.Errorf("wxtoken_quota_rescues_total{appid=platform,%s,%s} %v, want 1", metric, tc.outcome, got)
			}
			if tc.outcome == "unverified" {
				if n := strings.Count(w.logs.String(), "only verified (认证) accounts can"); n != 1 {
					t.Errorf("%d ERROR lines of the unverified platform, want 1", n)
				}
			}
			w.noSecretLogged(t)
		})
	}
}

// TestAuthorizersSharingThePlatformsQuotaAreRescuedOnce: two authorizers'
// fetches get 45009 together (the platform's quota of
// api_authorizer_token, which they share). One rescue resets it; the
// other authorizer, whose answer may have come before the reset, fetches
// again a minute later, not at midnight, and no second reset is made.
func TestAuthorizersSharingThePlatformsQuotaAreRescuedOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newPlatformRescueWorld(t, ctx, fakewechat.PathAuthorizerTok, rescueAuthorizer,
		func(f *fakewechat.Server) { f.SetQuotaLimit(rescuePlatform, fakewechat.PathAuthorizerTok, -1) }, nil, rescueAuthorizer2)
	other := *w
	other.key = rescueAuthorizer2
	other.first = other.awaitToken(t, ctx, "")
	// Both next fetches are answered 45009, whichever comes first.
	w.fake.Inject(rescueAuthorizer, fakewechat.Fault{ErrCode: 45009})
	w.fake.Inject(rescueAuthorizer2, fakewechat.Fault{ErrCode: 45009})
	w.dueNow()

	w.logs.await(t, ctx, "fetching again in 1m0s, once", 1)
	w.clock.advance(time.Minute)
	w.awaitToken(t, ctx, w.first)
	other.awaitToken(t, ctx, other.first)
	if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAPI) + w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAccount); n != 1 {
		t.Errorf("WeChat saw %d resets of the platform, want 1", n)
	}
	if l := w.ledger(t, ctx); l.Rescue == nil || l.Rescue.Count != 1 || l.PathResets()+l.AccountResets() != 1 {
		t.Errorf("platform's ledger %+v, rescue %+v: want one rescue and one reset counted", l.MonthCalls, l.Rescue)
	}
	if strings.Contains(w.logs.String(), "tried once today already") {
		t.Errorf("an authorizer was refused as again:\n%s", w.logs.String())
	}
	w.noSecretLogged(t)
}

// TestAnAuthorizationCodesSpentQuotaIsRescuedOnItsOwnPath: an account that
// authorizes the platform has its code exchanged (api_query_auth, counted
// against the platform); a 45009 there resets that path, not
// api_authorizer_token's.
func TestAnAuthorizationCodesSpentQuotaIsRescuedOnItsOwnPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newPlatformRescueWorld(t, ctx, fakewechat.PathQueryAuth, rescueAuthorizer, nil, nil)
	w.fake.SetQuotaLimit(rescuePlatform, fakewechat.PathQueryAuth, 0)
	if _, err := w.fake.Authorize(ctx, w.hook, rescuePlatform, rescueAuthorizer2); err != nil {
		t.Fatal(err)
	}
	w.logs.await(t, ctx, "quota rescued: the day's quota of /cgi-bin/component/api_query_auth was spent", 1)
	day := w.clock.now().In(time.FixedZone("", 8*3600)).Format(time.DateOnly)
	l := w.ledger(t, ctx)
	if l.Rescue == nil || l.Rescue.Rescued[fakewechat.PathQueryAuth] != day || l.Rescue.Rescued[fakewechat.PathAuthorizerTok] != "" {
		t.Errorf("platform's rescue %+v: want api_query_auth's rescued today, and not api_authorizer_token's", l.Rescue)
	}
	if n := w.fake.ClearsThisMonth(rescuePlatform, fakewechat.ClearAPI); n != 1 {
		t.Errorf("WeChat saw %d quota/clear calls of the platform, want 1", n)
	}
	w.noSecretLogged(t)
}
