package platform

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
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

const testAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

// platforms returns the platforms of a refresher that serves the platform
// of these tests, on a JetStream server; rebuilt counts OnAuthorizers.
func platforms(t *testing.T, rebuilt *int) (*Platforms, jetstream.JetStream) {
	t.Helper()
	_, js := natstest.JetStream(t)
	p := New(js, Config{Bucket: kv.DefaultPlatformBucket, Replicas: 1, Now: time.Now, Logger: slog.New(slog.DiscardHandler),
		OnAuthorizers: func() {
			if rebuilt != nil {
				*rebuilt++
			}
		}})
	if err := p.Serve([]Platform{{AppID: component, MessageToken: upstream.NewSecret("t"), EncodingAESKey: upstream.NewSecret(testAESKey)}}); err != nil {
		t.Fatal(err)
	}
	return p, js
}

// TestAuthorizersComeInWhateverEndsTheBurst: an authorizer's record
// followed, in the same burst, by a verify ticket still has the
// credentials made again with the authorizer, and a later record of it
// reaches the authorizer the credential fetches with.
func TestAuthorizersComeInWhateverEndsTheBurst(t *testing.T) {
	rebuilt := 0
	p, _ := platforms(t, &rebuilt)
	p.read()
	rebuilt = 0
	now := time.Now()
	record := func(refresh string, issued time.Time) []byte {
		data, err := kv.EncodeAuthorizer(kv.Authorizer{ComponentAppID: component, AppID: authorizer, RefreshToken: refresh, IssuedAt: issued})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	ticket, _ := kv.EncodeVerifyTicket(kv.VerifyTicket{ComponentAppID: component, Ticket: "ticket", CreateTime: now, ReceivedAt: now})
	p.observe(entry{key: kv.AuthorizerKey(component, authorizer), value: record("refresh-1", now), rev: 5, delta: 1})
	p.observe(entry{key: kv.VerifyTicketKey(component), value: ticket, rev: 6, delta: 0})
	a := p.Authorizer(authorizer)
	if rebuilt != 1 || a == nil {
		t.Fatalf("after a burst that ended with a ticket the credentials were made %d times, the authorizer is %v; want once, with it", rebuilt, a)
	}
	if refresh, _ := a.Grant(now); refresh.Reveal() != "refresh-1" {
		t.Fatal("the authorizer does not fetch with its refresh token")
	}
	p.observe(entry{key: kv.AuthorizerKey(component, authorizer), value: record("refresh-2", now.Add(time.Minute)), rev: 7, delta: 0})
	if refresh, _ := a.Grant(now); p.Authorizer(authorizer) != a || refresh.Reveal() != "refresh-2" {
		t.Error("a newer record did not reach the authorizer the credential fetches with")
	}
}

// TestTermEndStoresRefreshTokensLeftInMemory: a refresh token WeChat
// returned and the term could not store goes into the platform bucket when
// the term ends, lost lease or shutdown.
func TestTermEndStoresRefreshTokensLeftInMemory(t *testing.T) {
	p, _ := platforms(t, nil)
	ctx := t.Context()
	if err := p.Open(ctx); err != nil {
		t.Fatal(err)
	}
	b := *p.bucket.Load()
	old := time.Now().Add(-time.Hour)
	rec, rev, _, err := kv.UpdateAuthorizer(ctx, b, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
		return kv.Authorizer{RefreshToken: "refresh-old", IssuedAt: old}, true
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := kv.EncodeAuthorizer(rec)
	p.read()
	p.observe(entry{key: kv.AuthorizerKey(component, authorizer), value: data, rev: rev})
	a := p.Authorizer(authorizer)
	if a == nil {
		t.Fatal("no record of the authorizer")
	}
	a.Hold(upstream.NewSecret("refresh-new"), time.Now(), "")

	p.Flush()
	stored, _, _, err := kv.UpdateAuthorizer(ctx, b, component, authorizer, func(kv.Authorizer, bool) (kv.Authorizer, bool) { return kv.Authorizer{}, false })
	if err != nil || stored.RefreshToken != "refresh-new" {
		t.Errorf("the bucket holds %v (%v), want the refresh token held in memory", stored, err)
	}
	if refresh, _ := a.Grant(time.Now()); refresh.Reveal() != "refresh-new" {
		t.Error("the authorizer does not fetch with the stored refresh token")
	}
}

// TestCallbackAnswers503UntilThePlatformBucketIsOpen: before the platform
// bucket is open a push cannot be stored, so the callback answers 503, to
// WeChat's push (which it makes again later) and to a load balancer's
// health check (a GET) alike; once the bucket is open, the push is taken.
func TestCallbackAnswers503UntilThePlatformBucketIsOpen(t *testing.T) {
	p, _ := platforms(t, nil)
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(component, "s", "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
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

	if err := p.Open(t.Context()); err != nil {
		t.Fatal(err)
	}
	if status := health(); status != http.StatusOK {
		t.Errorf("the health check once the bucket is open: %d, want 200", status)
	}
	if answer, err := fake.Authorize(t.Context(), srv.URL, component, authorizer); err != nil || answer != "success" {
		t.Errorf("a push once the bucket is open: %q, %v", answer, err)
	}
	if _, err := (*p.bucket.Load()).Get(t.Context(), kv.AuthorizerKey(component, authorizer)); err != nil {
		t.Errorf("the push was not stored: %v", err)
	}
}

// TestRefreshTokenWaitsForThePlatformBucket: a refresh token WeChat
// returned before the platform bucket is open stays held, and Save says
// so (the loop then stores no token it came with); once the bucket is
// open, Save stores it.
func TestRefreshTokenWaitsForThePlatformBucket(t *testing.T) {
	p, js := platforms(t, nil)
	ctx := t.Context()
	now := time.Now()
	data, _ := kv.EncodeAuthorizer(kv.Authorizer{ComponentAppID: component, AppID: authorizer, RefreshToken: "refresh-old", IssuedAt: now.Add(-time.Hour)})
	p.read()
	p.observe(entry{key: kv.AuthorizerKey(component, authorizer), value: data, rev: 1})
	a := p.Authorizer(authorizer)
	if a == nil {
		t.Fatal("no record of the authorizer")
	}
	a.Hold(upstream.NewSecret("refresh-new"), now, "")

	if err := a.Save(ctx); err == nil {
		t.Fatal("Save reported the refresh token stored before the platform bucket was open")
	}
	if !a.Unsaved() {
		t.Fatal("the refresh token was dropped, not held")
	}

	if err := p.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx); err != nil {
		t.Fatalf("Save once the bucket is open: %v", err)
	}
	b, err := js.KeyValue(ctx, kv.DefaultPlatformBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := b.Get(ctx, kv.AuthorizerKey(component, authorizer))
	if err != nil {
		t.Fatalf("the refresh token was not stored: %v", err)
	}
	if rec, _ := kv.DecodeAuthorizer(e.Key(), e.Value()); rec.RefreshToken != "refresh-new" {
		t.Errorf("the bucket holds refresh token %q, want the one held", rec.RefreshToken)
	}
	if a.Unsaved() {
		t.Error("the refresh token is still held as unsaved once stored")
	}
}
