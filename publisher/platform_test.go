package publisher

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// entry is a platform bucket entry as the follower delivers it.
type entry struct {
	key   string
	value []byte
	rev   uint64
	delta uint64
}

func (e entry) Bucket() string                  { return kv.DefaultPlatformBucket }
func (e entry) Key() string                     { return e.key }
func (e entry) Value() []byte                   { return e.value }
func (e entry) Revision() uint64                { return e.rev }
func (e entry) Created() time.Time              { return time.Time{} }
func (e entry) Delta() uint64                   { return e.delta }
func (e entry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }

// The platform of these tests, and an account that authorized it.
const component, authorizer = "wx00000000000c0a01", "wx00000000000a0001"

// platformRefresher returns a refresher of the platform, not running.
func platformRefresher(t *testing.T) *Refresher {
	t.Helper()
	nc, _ := jetStream(t)
	platform := App{AppID: component, Secret: NewSecret("s"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{platform}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestAuthorizersComeInWhateverEndsTheBurst: an authorizer's record
// followed, in the same burst, by a verify ticket still makes the
// authorizer a credential, and a later record of it reaches that
// credential.
func TestAuthorizersComeInWhateverEndsTheBurst(t *testing.T) {
	r := platformRefresher(t)
	r.platformsSynced()
	now := time.Now()
	record := func(refresh string, issued time.Time) []byte {
		data, err := kv.EncodeAuthorizer(kv.Authorizer{ComponentAppID: component, AppID: authorizer, RefreshToken: refresh, IssuedAt: issued})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	ticket, _ := kv.EncodeVerifyTicket(kv.VerifyTicket{ComponentAppID: component, Ticket: "ticket", CreateTime: now, ReceivedAt: now})
	r.observePlatform(entry{key: kv.AuthorizerKey(component, authorizer), value: record("refresh-1", now), rev: 5, delta: 1})
	r.observePlatform(entry{key: kv.VerifyTicketKey(component), value: ticket, rev: 6, delta: 0})
	c := r.credential(authorizer)
	if c == nil || c.auth == nil || c.secret.Reveal() != "refresh-1" {
		t.Fatalf("after a burst that ended with a ticket the authorizer is %+v, want a credential with its refresh token", c)
	}
	r.observePlatform(entry{key: kv.AuthorizerKey(component, authorizer), value: record("refresh-2", now.Add(time.Minute)), rev: 7, delta: 0})
	if got := r.credential(authorizer); got != c || c.secret.Reveal() != "refresh-2" {
		t.Error("a newer record did not reach the authorizer's credential")
	}
}

// TestTermEndStoresRefreshTokensLeftInMemory: a refresh token WeChat
// returned and the term could not store goes into the platform bucket when
// the term ends, lost lease or shutdown.
func TestTermEndStoresRefreshTokensLeftInMemory(t *testing.T) {
	r := platformRefresher(t)
	ctx := t.Context()
	b, err := r.openPlatformBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.platformBucket.Store(&b)
	old := time.Now().Add(-time.Hour)
	rec, rev, _, err := kv.UpdateAuthorizer(ctx, b, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
		return kv.Authorizer{RefreshToken: "refresh-old", IssuedAt: old}, true
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := kv.EncodeAuthorizer(rec)
	r.platformsSynced()
	r.observePlatform(entry{key: kv.AuthorizerKey(component, authorizer), value: data, rev: rev})
	c := r.credential(authorizer)
	if c == nil {
		t.Fatal("no credential for the authorizer")
	}
	r.holdRefresh(c, issuedValue{Issued: upstream.Issued{At: time.Now()}, Refresh: NewSecret("refresh-new")}, "")

	r.flushRefresh()
	stored, _, _, err := kv.UpdateAuthorizer(ctx, b, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) { return kv.Authorizer{}, false })
	if err != nil || stored.RefreshToken != "refresh-new" {
		t.Errorf("the bucket holds %v (%v), want the refresh token held in memory", stored, err)
	}
	if c.secret.Reveal() != "refresh-new" {
		t.Error("the credential does not use the stored refresh token")
	}
}

// TestLeftoverRefreshTokenGoesInBeforeTheToken: between terms, an
// authorizer's token left in memory is stored only after the refresh
// token WeChat returned with it, as in a rotation: never a token whose
// refresh token could be lost.
func TestLeftoverRefreshTokenGoesInBeforeTheToken(t *testing.T) {
	r := platformRefresher(t)
	ctx := t.Context()
	tokens, err := bucket.Open(ctx, r.js, r.bucketConfig())
	if err != nil {
		t.Fatal(err)
	}
	platforms, err := r.openPlatformBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	rec, rev, _, err := kv.UpdateAuthorizer(ctx, platforms, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
		return kv.Authorizer{RefreshToken: "refresh-old", IssuedAt: issued.Add(-time.Hour)}, true
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := kv.EncodeAuthorizer(rec)
	r.platformsSynced()
	r.observePlatform(entry{key: kv.AuthorizerKey(component, authorizer), value: data, rev: rev})
	c := r.credential(authorizer)
	if c == nil {
		t.Fatal("no credential for the authorizer")
	}
	r.holdRefresh(c, issuedValue{Issued: upstream.Issued{At: issued}, Refresh: NewSecret("refresh-new")}, "")
	token := kv.NewCredential(authorizer, "authorizer-token", 2*time.Hour, issued)
	c.mu.Lock()
	c.pending = &token
	c.mu.Unlock()

	// The platform bucket is not open yet: the refresh token cannot be
	// stored, so neither is the token.
	if !r.storeLeftover(ctx, tokens, c) {
		t.Fatal("nothing left, though the refresh token could not be stored")
	}
	if _, err := tokens.Get(ctx, authorizer); err == nil {
		t.Fatal("the token was stored before its refresh token")
	}

	r.platformBucket.Store(&platforms)
	if r.storeLeftover(ctx, tokens, c) {
		t.Fatal("still left once the platform bucket is open")
	}
	stored, _, _, err := kv.UpdateAuthorizer(ctx, platforms, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) { return kv.Authorizer{}, false })
	if err != nil || stored.RefreshToken != "refresh-new" {
		t.Errorf("the platform bucket holds %v (%v), want the refresh token held in memory", stored, err)
	}
	e, err := tokens.Get(ctx, authorizer)
	if err != nil {
		t.Fatalf("the token was not stored: %v", err)
	}
	if got, _ := kv.DecodeCredential(authorizer, e.Value()); got.Value != "authorizer-token" {
		t.Errorf("the bucket holds %q, want the token left in memory", got.Value)
	}
}

// TestCallbackAnswers503UntilThePlatformBucketIsOpen: before the platform
// bucket is open a push cannot be stored, so the callback answers 503, to
// WeChat's push (which it makes again later) and to a load balancer's
// health check (a GET) alike; once the bucket is open, the push is taken.
func TestCallbackAnswers503UntilThePlatformBucketIsOpen(t *testing.T) {
	r := platformRefresher(t)
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(component, "s", "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Callback())
	defer srv.Close()
	health := func() int {
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	answer, err := fake.Authorize(t.Context(), srv.URL, component, authorizer)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("a push before the bucket is open: %q, %v; want 503", answer, err)
	}
	if status := health(); status != http.StatusServiceUnavailable {
		t.Errorf("the health check before the bucket is open: %d, want 503", status)
	}

	b, err := r.openPlatformBucket(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	r.platformBucket.Store(&b)
	if status := health(); status != http.StatusOK {
		t.Errorf("the health check once the bucket is open: %d, want 200", status)
	}
	if answer, err := fake.Authorize(t.Context(), srv.URL, component, authorizer); err != nil || answer != "success" {
		t.Errorf("a push once the bucket is open: %q, %v", answer, err)
	}
	if _, err := b.Get(t.Context(), kv.AuthorizerKey(component, authorizer)); err != nil {
		t.Errorf("the push was not stored: %v", err)
	}
}

// TestStartPushBodyIsJSON: the request that asks WeChat to push the verify
// ticket again is JSON whatever the secret holds. Go's %q quoting is not
// JSON's: a DEL is "\x7f" to Go and "\u007f" to JSON, and WeChat refuses
// a body that is no JSON.
func TestStartPushBodyIsJSON(t *testing.T) {
	const secret = "component\x7fsecret\x01"
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(component, secret, "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	nc, _ := jetStream(t)
	app := App{AppID: component, Secret: NewSecret(secret), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{app}, UpstreamURL: srv.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tm := &term{ctx: t.Context(), work: t.Context(), onPanic: r.logPanic, lease: &fakeLease{left: time.Hour}}
	r.startPush(tm, r.credential(component), app.Secret)
	if n := fake.StartPushCalls(component); n != 1 {
		t.Errorf("WeChat took %d requests to push the ticket again, want 1", n)
	}
}

// TestNoVerifyTicketMakesNoCall: a platform that has no verify ticket yet
// cannot fetch its component token, and asking WeChat for one without a
// ticket is no call at all: it does not wait for the pacer's turn (here
// one call in 105 s: the push restart must have the turn), is not refused
// for a lease too short to cover a call, and is not counted as a call to
// WeChat. WeChat is asked to push a ticket, and the failure says why.
func TestNoVerifyTicketMakesNoCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		left time.Duration // of the lease
	}{
		{"the lease covers a call", time.Hour},
		{"the lease is too short for a call", time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fake := fakewechat.New(fakewechat.Config{})
			if err := fake.AddPlatform(component, "s", "t", testAESKey); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(fake)
			defer srv.Close()
			nc, js := jetStream(t)
			reg := prometheus.NewRegistry()
			app := App{AppID: component, Secret: NewSecret("s"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
			r, err := New(nc, Config{Apps: []App{app}, UpstreamURL: srv.URL, UpstreamRate: MinUpstreamRate, UpstreamTimeout: time.Second,
				Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			platforms, err := r.openPlatformBucket(ctx)
			if err != nil {
				t.Fatal(err)
			}
			r.platformBucket.Store(&platforms)
			tokens, err := bucket.Open(ctx, js, r.bucketConfig())
			if err != nil {
				t.Fatal(err)
			}
			failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(component))
			if err != nil {
				t.Fatal(err)
			}
			termCtx, endTerm := context.WithCancel(ctx)
			led := make(chan error, 1)
			go func() { led <- r.lead(termCtx, tokens, &fakeLease{lostCh: make(chan struct{}), left: tc.left}) }()
			defer func() {
				endTerm()
				<-led
			}()

			msg, err := failed.NextMsgWithContext(ctx)
			if err != nil {
				t.Fatalf("no failure event: %v", err)
			}
			var ev kv.FailureEvent
			if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Class != "ticket" {
				t.Errorf("failure event %s, want class ticket", msg.Data)
			}
			if n := fake.StartPushCalls(component); n != 1 {
				t.Errorf("WeChat was asked %d times to push a ticket, want once", n)
			}
			calls := map[string]float64{}
			families, _ := reg.Gather()
			for _, f := range families {
				if f.GetName() != "wxtoken_upstream_requests_total" {
					continue
				}
				for _, m := range f.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "api" {
							calls[l.GetValue()] += m.GetCounter().GetValue()
						}
					}
				}
			}
			if calls["component_token"] != 0 || calls["start_push_ticket"] != 1 {
				t.Errorf("calls counted by API: %v, want the push restart alone", calls)
			}
		})
	}
}
