package test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// stableApps registers appids at the fake and returns them as stable_token
// apps.
func stableApps(fake *fakewechat.Server, appids ...string) []publisher.App {
	apps := testenv.Apps(fake, appids...)
	for i := range apps {
		apps[i].TokenAPI = publisher.TokenAPIStable
	}
	return apps
}

// callStable calls the fake's stable_token as another deployment of the
// app would, and returns the token.
func callStable(t *testing.T, wechatURL, appid string, force bool) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": appid, "secret": "secret-of-" + appid, "force_refresh": force})
	resp, err := http.Post(wechatURL+"/cgi-bin/stable_token", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		AccessToken string `json:"access_token"`
		ErrCode     int    `json:"errcode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.AccessToken == "" {
		t.Fatalf("stable_token by hand: %+v, %v", a, err)
	}
	return a.AccessToken
}

// TestStableTokenIsReplacedInItsLastMinutes: a scheduled refresh of a
// stable token calls normal mode inside the renewal stretch, gets a new
// token, and the old one still works: nothing was forced, nobody's token
// was cut short.
func TestStableTokenIsReplacedInItsLastMinutes(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	// WeChat's 2 h and 5 min, scaled down: the refresher's window (2 s,
	// spread included at most 2.4 s, plus the second fetched_at is cut
	// by) falls inside the fake's 4 s.
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 8 * time.Second, StableRenewBefore: 4 * time.Second})
	entries := testenv.Entries(t, openBucket(t, ctx, nc), appA)
	testenv.Refresher(t, nc, publisher.Config{Apps: stableApps(fake, appA), UpstreamURL: url, RefreshBefore: 2 * time.Second})

	first := testenv.Record(t, testenv.Next(t, ctx, entries))
	second := testenv.Record(t, testenv.Next(t, ctx, entries))
	if second.Value == first.Value {
		t.Fatal("the rotation stored the same token again")
	}
	if ok, code := fake.Valid(first.Value); !ok {
		t.Errorf("the replaced token stopped working at once (errcode %d): it should live out its time", code)
	}
	if left := time.Until(first.ExpiresAt); left <= 0 {
		t.Errorf("the token was replaced after it expired (%s late)", -left)
	}
	if fake.Forced(appA) != 0 {
		t.Errorf("%d forced refreshes for a scheduled rotation", fake.Forced(appA))
	}
	if calls, issued := fake.Calls(appA), fake.Issued(appA); issued != 2 || calls > 4 {
		t.Errorf("%d calls issued %d tokens for two; want 2 tokens in at most 4 calls", calls, issued)
	}
}

// openBucket creates the token bucket as a refresher would.
func openBucket(t *testing.T, ctx context.Context, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStableAnswerRepeatingTheTokenWritesNothing: WeChat answering with the
// token the bucket holds (called before its renewal, by a clock that
// differs from WeChat's) writes nothing, and is not asked again at once;
// nothing is issued, no token ends.
func TestStableAnswerRepeatingTheTokenWritesNothing(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := stableApps(fake, appA)
	held := callStable(t, url, appA, false) // valid for 2 h at WeChat
	// The bucket says it expires in 4 s: the refresher thinks it due.
	b := openBucket(t, ctx, nc)
	now := time.Now().UTC().Truncate(time.Second)
	stored := kv.Credential{Key: appA, Value: held, ExpiresIn: 3600, FetchedAt: now.Add(-time.Hour), ExpiresAt: now.Add(4 * time.Second)}
	data, _ := kv.EncodeCredential(stored)
	rev, err := b.Create(ctx, appA, data)
	if err != nil {
		t.Fatal(err)
	}
	entries := testenv.Entries(t, b, appA)
	if e := testenv.Next(t, ctx, entries); e.Revision() != rev {
		t.Fatalf("first entry %d, want the one put (%d)", e.Revision(), rev)
	}
	// A lease bucket that is new beside a stored token waits a TTL.
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url, RefreshBefore: 2 * time.Second, LeaseTTL: time.Second, UpstreamTimeout: 500 * time.Millisecond})

	next := testenv.Next(t, ctx, entries)
	written := time.Now()
	rec := testenv.Record(t, next)
	if written.Before(stored.ExpiresAt) {
		t.Errorf("revision %d written %s before the stored token's expiry: an answer repeating a valid token must write nothing",
			next.Revision(), stored.ExpiresAt.Sub(written))
	}
	if rec.Value != held {
		t.Error("once the stored record expired, WeChat's same token should have gone in with its real expiry")
	}
	if rec.ExpiresAt.Sub(written) < time.Hour {
		t.Errorf("the token written expires in %s, want WeChat's time left (about 2 h)", rec.ExpiresAt.Sub(written))
	}
	calls := fake.Calls(appA) - 1 // the test's own
	if calls < 2 || calls > 6 {
		t.Errorf("%d calls while the token was due for 2 s and then expired; want a few, not one per check or none", calls)
	}
	if fake.Issued(appA) != 1 || fake.Forced(appA) != 0 {
		t.Errorf("issued %d, forced %d: want the one token, nothing forced", fake.Issued(appA), fake.Forced(appA))
	}
}

// forceBudgetKey is the key of appA's force budget, as the README's wire
// contract names it.
const forceBudgetKey = appA + ".force_budget"

// forceBudget is the value of a force budget key, as the README's wire
// contract has it.
type forceBudget struct {
	AppID string    `json:"appid"`
	Day   string    `json:"day"`
	Used  int       `json:"used"`
	Last  time.Time `json:"last"`
}

// readForceBudget reads appA's force budget from the bucket.
func readForceBudget(t *testing.T, ctx context.Context, b jetstream.KeyValue) forceBudget {
	t.Helper()
	e, err := b.Get(ctx, forceBudgetKey)
	if err != nil {
		t.Fatalf("force budget: %v", err)
	}
	var budget forceBudget
	if err := json.Unmarshal(e.Value(), &budget); err != nil || budget.AppID != appA {
		t.Fatalf("force budget %s: %v, want appid %s", e.Value(), err, appA)
	}
	return budget
}

func chinaToday() string {
	return time.Now().In(time.FixedZone("UTC+8", 8*3600)).Format(time.DateOnly)
}

// TestStableForcedRefreshIsForADeadTokenOnly walks a stable app's forced
// refreshes: a token WeChat says works is kept; one dead because somebody
// else forced a refresh is replaced by a normal call; only one WeChat
// says is dead and still returns is force-refreshed, counted in the
// bucket, so that another replica knows the 30 s spacing and the 20 a day,
// and requests beyond them get rate_limited with the reason.
func TestStableForcedRefreshIsForADeadTokenOnly(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	// The fake's own 30 s spacing would also refuse this test's forced
	// refresh a moment after the one "another deployment" makes.
	fake, url := testenv.WeChat(t, fakewechat.Config{ForceSpacing: time.Millisecond})
	cfg := publisher.Config{Apps: stableApps(fake, appA), UpstreamURL: url, MinForceInterval: time.Nanosecond,
		LeaseTTL: time.Second, UpstreamTimeout: 500 * time.Millisecond}
	b := openBucket(t, ctx, nc)
	one := testenv.Refresher(t, nc, cfg)
	awaitEndpoint(t, ctx, nc, appA)
	refresh := func(stale uint64) kv.RefreshReply {
		return request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: &stale})
	}
	rev := awaitEndpoint(t, ctx, nc, appA).Revision

	// WeChat says the token works: kept.
	if reply := refresh(rev); reply.Error != nil || reply.Refreshed || reply.Revision != rev {
		t.Fatalf("a request naming a working token: %+v, want it kept", reply)
	}

	// Another deployment forced a refresh: ours is dead, and normal mode
	// returns the new one, at no cost to our budget.
	theirs := callStable(t, url, appA, true)
	reply := refresh(rev)
	if reply.Error != nil || !reply.Refreshed {
		t.Fatalf("a token dead by another's forced refresh: %+v", reply)
	}
	if got := testenv.Record(t, mustGet(t, ctx, b, appA)); got.Value != theirs {
		t.Fatal("the token stored is not the one WeChat now gives")
	}
	if fake.Forced(appA) != 1 {
		t.Fatalf("%d forced refreshes at WeChat, want only the other deployment's", fake.Forced(appA))
	}
	if _, err := b.Get(ctx, forceBudgetKey); err == nil {
		t.Error("a force budget was spent on a token a normal call replaced")
	}

	// A token WeChat says is dead and still returns: forced, and counted
	// on the China day (the one before or after, were midnight to pass).
	fake.Revoke(theirs)
	day := chinaToday()
	if reply = refresh(reply.Revision); reply.Error != nil || !reply.Refreshed {
		t.Fatalf("a revoked token: %+v, want it force-refreshed", reply)
	}
	if fake.Forced(appA) != 2 {
		t.Fatalf("%d forced refreshes at WeChat, want 2", fake.Forced(appA))
	}
	if budget := readForceBudget(t, ctx, b); budget.Used != 1 || (budget.Day != day && budget.Day != chinaToday()) {
		t.Fatalf("force budget %+v, want 1 used today", budget)
	}

	// Another replica takes over and knows the last forced refresh was
	// under 30 s ago: WeChat would not refresh, so it is not asked.
	if err := one.Stop(); err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, cfg)
	awaitEndpoint(t, ctx, nc, appA)
	fake.Revoke(fake.Stable(appA))
	reply = refresh(reply.Revision)
	if reply.Error == nil || reply.Error.Code != kv.CodeRateLimited || !strings.Contains(reply.Error.Message, "30s") ||
		reply.Error.RetryAfter < 1 || reply.Error.RetryAfter > 30 || strings.Contains(reply.Error.Message, "publisher:") {
		t.Fatalf("a forced refresh within 30 s of the last, after a failover: %+v, want rate_limited naming the 30 s, and retry_after within them", reply)
	}
	if fake.Forced(appA) != 2 {
		t.Fatalf("%d forced refreshes at WeChat, want still 2", fake.Forced(appA))
	}

	// The day's 20 spent (as another replica counted them): refused with
	// the reason, and a failure event says so.
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appA))
	if err != nil {
		t.Fatal(err)
	}
	spent, _ := json.Marshal(forceBudget{AppID: appA, Day: chinaToday(), Used: 20, Last: time.Now().Add(-time.Minute).UTC()})
	if _, err := b.Put(ctx, forceBudgetKey, spent); err != nil {
		t.Fatal(err)
	}
	reply = refresh(reply.Revision)
	china := time.Now().In(time.FixedZone("UTC+8", 8*3600))
	untilMidnight := int(time.Until(time.Date(china.Year(), china.Month(), china.Day()+1, 0, 0, 0, 0, china.Location())) / time.Second)
	if reply.Error == nil || reply.Error.Code != kv.CodeRateLimited || !strings.Contains(reply.Error.Message, "20 forced refreshes") ||
		reply.Error.RetryAfter < untilMidnight-5 || reply.Error.RetryAfter > untilMidnight+5 {
		t.Fatalf("a forced refresh with the day's 20 spent: %+v, want rate_limited saying so, and retry_after until midnight China time", reply)
	}
	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.Class != "quota" || !strings.Contains(ev.ErrMsg, "20 forced refreshes") || ev.NextAttempt.IsZero() {
		t.Errorf("failure event %+v, want a quota event naming the spent forced refreshes", ev)
	}
	if fake.Forced(appA) != 2 {
		t.Errorf("%d forced refreshes at WeChat, want still 2", fake.Forced(appA))
	}
}

func mustGet(t *testing.T, ctx context.Context, b jetstream.KeyValue, key string) jetstream.KeyValueEntry {
	t.Helper()
	e, err := b.Get(ctx, key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return e
}
