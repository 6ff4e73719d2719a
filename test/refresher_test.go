package test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

const appA = "wxa000000000000001"

// request sends a refresh request and decodes the reply.
func request(t testing.TB, ctx context.Context, nc *nats.Conn, appid string, req kv.RefreshRequest) kv.RefreshReply {
	t.Helper()
	msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(appid), kv.EncodeRefreshRequest(req))
	if err != nil {
		t.Fatalf("refresh request for %s: %v", appid, err)
	}
	var reply kv.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("reply %q: %v", msg.Data, err)
	}
	return reply
}

// awaitEndpoint waits until a refresher answers refresh requests for appid.
// It is the sign that the refresher has read the bucket and leads.
func awaitEndpoint(t testing.TB, ctx context.Context, nc *nats.Conn, appid string) kv.RefreshReply {
	t.Helper()
	for {
		msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(appid), nil)
		if err == nil {
			var reply kv.RefreshReply
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatalf("reply %q: %v", msg.Data, err)
			}
			return reply
		}
		if ctx.Err() != nil {
			t.Fatalf("refresh endpoint never answered: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func revision(n uint64) *uint64 { return &n }

func TestFirstTokenIsFetchedAndAnnounced(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	rotated, err := nc.SubscribeSync(kv.Subjects{}.Rotated(appA))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url})

	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)
	e := testenv.Next(t, ctx, entries)
	rec := testenv.Record(t, e)
	if rec.Value != fake.Current(appA) {
		t.Errorf("bucket holds %.12q..., WeChat issued %.12q...", rec.Value, fake.Current(appA))
	}
	if rec.ExpiresIn != 7200 || rec.Lifetime() != 7200*time.Second {
		t.Errorf("expires_in %d, lifetime %s; want 7200s", rec.ExpiresIn, rec.Lifetime())
	}
	ev, data := nextEvent[kv.RotationEvent](t, ctx, rotated)
	want := kv.RotationEvent{AppID: appA, Revision: e.Revision(), FetchedAt: rec.FetchedAt, ExpiresAt: rec.ExpiresAt, Reason: kv.ReasonInitial}
	if !ev.FetchedAt.Equal(want.FetchedAt) || !ev.ExpiresAt.Equal(want.ExpiresAt) || ev.AppID != want.AppID ||
		ev.Revision != want.Revision || ev.Reason != want.Reason {
		t.Errorf("rotation event %+v, want %+v", ev, want)
	}
	var raw map[string]any
	json.Unmarshal(data, &raw)
	if _, ok := raw["access_token"]; ok {
		t.Errorf("rotation event carries the token: %s", data)
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d upstream calls, want 1", got)
	}
}

// TestShortLivedTokensAreReplacedBeforeExpiry runs tokens that live 3s under
// the default schedule (a check every 30s): every token must be replaced
// while it still works, so services never hold a dead one.
func TestShortLivedTokensAreReplacedBeforeExpiry(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSystem(t, fakewechat.Config{ExpiresIn: 3 * time.Second, Overlap: -1}, publisher.Config{})
	nc, fake := sys.nc, sys.fake
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)

	prev := testenv.Record(t, testenv.Next(t, ctx, entries))
	for i := range 4 {
		e := testenv.Next(t, ctx, entries)
		seen := time.Now()
		rec := testenv.Record(t, e)
		if !seen.Before(prev.ExpiresAt) {
			t.Fatalf("rotation %d: new token arrived at %s, after the previous expired at %s",
				i, seen.Format(time.RFC3339Nano), prev.ExpiresAt.Format(time.RFC3339Nano))
		}
		// Overlap -1: WeChat kills the previous token the moment it issues
		// this one, so the bucket must already hold this one.
		if ok, code := fake.Valid(rec.Value); !ok && time.Now().Before(rec.ExpiresAt) {
			t.Fatalf("rotation %d: WeChat says the stored token is invalid (errcode %d)", i, code)
		}
		prev = rec
	}
	if calls, issued := fake.Calls(appA), fake.Issued(appA); calls != issued {
		t.Errorf("%d calls for %d tokens: only successful fetches were expected", calls, issued)
	}
}

func TestRestartReusesValidToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)

	first := testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url})
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)
	e := testenv.Next(t, ctx, entries)
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url})
	reply := awaitEndpoint(t, ctx, nc, appA)
	if reply.Error != nil || reply.Revision != e.Revision() || reply.Refreshed {
		t.Fatalf("restarted refresher answers %+v, want revision %d unrefreshed", reply, e.Revision())
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d upstream calls after a restart, want 1 (the token was still valid)", got)
	}
}

// invalidated starts a refresher for appA whose first token WeChat has
// already replaced, as happens when someone fetched a token behind the
// central server's back: services see 40001 and ask for a refresh.
func invalidated(t *testing.T, ctx context.Context, cfg publisher.Config) (*nats.Conn, *fakewechat.Server, uint64) {
	t.Helper()
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, cfg)
	e := leading(t, ctx, sys)
	sys.fake.Issue(appA)
	return sys.nc, sys.fake, e.Revision()
}

func TestConcurrentRefreshRequestsShareOneFetch(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc, fake, stale := invalidated(t, ctx, publisher.Config{})
	callsBefore := fake.Calls(appA)

	const n = 200
	replies := make([]kv.RefreshReply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			replies[i] = request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(stale), Reason: "40001"})
		})
	}
	wg.Wait()

	if got := fake.Calls(appA) - callsBefore; got != 1 {
		t.Errorf("%d concurrent refresh requests cost %d upstream token calls, want exactly 1", n, got)
	}
	if got := fake.Checks(appA); got != 1 {
		t.Errorf("%d token checks, want 1", got)
	}
	refreshed := 0
	for i, r := range replies {
		if r.Error != nil || r.Revision <= stale {
			t.Fatalf("reply %d: %+v, want a revision after %d", i, r, stale)
		}
		if r.Revision != replies[0].Revision {
			t.Fatalf("reply %d names revision %d, reply 0 names %d", i, r.Revision, replies[0].Revision)
		}
		if r.Refreshed {
			refreshed++
		}
	}
	if refreshed == 0 {
		t.Error("no reply says refreshed")
	}
	t.Logf("%d requests: 1 upstream call, %d replies joined the fetch, %d came after it", n, refreshed, n-refreshed)

	// The same revision named again is now an old revision: no call at all.
	callsBefore = fake.Calls(appA)
	for i := range n {
		wg.Go(func() {
			replies[i] = request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(stale)})
		})
	}
	wg.Wait()
	if got := fake.Calls(appA) - callsBefore; got != 0 {
		t.Errorf("%d requests naming an old revision cost %d upstream calls, want 0", n, got)
	}
	for i, r := range replies {
		if r.Error != nil || r.Refreshed || r.Revision != replies[0].Revision {
			t.Fatalf("old-revision reply %d: %+v", i, r)
		}
	}
}

func TestForcedRefreshesAreRateLimited(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc, fake, stale := invalidated(t, ctx, publisher.Config{MinForceInterval: time.Hour})

	first := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(stale)})
	if first.Error != nil || !first.Refreshed {
		t.Fatalf("first forced refresh: %+v", first)
	}
	fake.Issue(appA) // the new token is knocked out too
	calls := fake.Calls(appA)
	second := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(first.Revision)})
	if second.Error == nil || second.Error.Code != kv.CodeRateLimited {
		t.Fatalf("second forced refresh within the interval: %+v, want rate_limited", second)
	}
	if second.Revision != first.Revision || second.Refreshed {
		t.Errorf("rate_limited reply names %+v, want the current revision %d", second, first.Revision)
	}
	if hour := int(time.Hour / time.Second); second.Error.RetryAfter < hour-30 || second.Error.RetryAfter > hour {
		t.Errorf("rate_limited reply says retry_after %d, want the seconds left of the hour since the first (about %d)", second.Error.RetryAfter, hour)
	}
	if got := fake.Calls(appA); got != calls {
		t.Errorf("rate-limited request made %d upstream calls", got-calls)
	}
}

func TestForcedRefreshKeepsTokenWeChatStillAccepts(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	nc, fake := sys.nc, sys.fake
	e := leading(t, ctx, sys)

	reply := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(e.Revision()), Reason: "40001"})
	if reply.Error != nil || reply.Refreshed || reply.Revision != e.Revision() {
		t.Fatalf("reply %+v, want revision %d not refreshed", reply, e.Revision())
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token calls, want 1: WeChat said the token works", got)
	}
	if got := fake.Checks(appA); got != 1 {
		t.Errorf("%d token checks, want 1", got)
	}
}

func TestRefreshRequestErrors(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	nc, fake := sys.nc, sys.fake
	e := leading(t, ctx, sys)

	for _, tc := range []struct {
		name, appid, body, code string
	}{
		{"unknown app", "wxunknown000000000", `{}`, kv.CodeUnknownApp},
		{"malformed JSON", appA, `{"stale_revision":`, kv.CodeBadRequest},
		{"revision as string", appA, `{"stale_revision":"1"}`, kv.CodeBadRequest},
		{"negative revision", appA, `{"stale_revision":-1}`, kv.CodeBadRequest},
		{"fractional revision", appA, `{"stale_revision":1.5}`, kv.CodeBadRequest},
		{"revision from the future", appA, `{"stale_revision":9000000000000000000}`, kv.CodeBadRequest},
		{"array", appA, `[1,2]`, kv.CodeBadRequest},
		{"oversized", appA, `{"reason":"` + string(make([]byte, 2000)) + `"}`, kv.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(tc.appid), []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			var reply kv.RefreshReply
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatalf("reply %q: %v", msg.Data, err)
			}
			if reply.Error == nil || reply.Error.Code != tc.code {
				t.Fatalf("reply %s, want error %s", msg.Data, tc.code)
			}
			if msg.Header.Get("Nats-Service-Error-Code") == "" {
				t.Errorf("no micro error header on %s", msg.Data)
			}
		})
	}
	// Nothing above cost an upstream call, and the endpoint still works.
	if reply := request(t, ctx, nc, appA, kv.RefreshRequest{}); reply.Error != nil || reply.Revision != e.Revision() {
		t.Errorf("after bad requests: %+v", reply)
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d upstream calls, want 1", got)
	}
}

// TestFailingAppDoesNotDisturbOthers gives one app a wrong whitelist and
// another a WeChat that hangs: the third app's tokens keep coming.
func TestFailingAppDoesNotDisturbOthers(t *testing.T) {
	const appB, appC = "wxb000000000000002", "wxc000000000000003"
	ctx := testenv.Context(t, 60*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 2 * time.Second})
	apps := testenv.Apps(fake, appA, appB, appC)
	fake.Fail(appB, fakewechat.Fault{ErrCode: 40164})
	fake.Fail(appC, fakewechat.Fault{Delay: time.Hour})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appB))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url, UpstreamTimeout: time.Second})
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)

	for range 3 { // the first token and two rotations, while B fails and C hangs
		testenv.Record(t, testenv.Next(t, ctx, entries))
	}
	ev, data := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.AppID != appB || ev.ErrCode != 40164 || ev.Class != "config" || !ev.NextAttempt.After(time.Now().Add(5*time.Minute)) {
		t.Errorf("failure event %s", data)
	}
	if got := fake.Calls(appB); got != 1 {
		t.Errorf("app B with a configuration error was called %d times, want 1 (long backoff)", got)
	}
	reply := request(t, ctx, nc, appA, kv.RefreshRequest{})
	if reply.Error != nil {
		t.Errorf("app A's endpoint while C hangs: %+v", reply)
	}
}
