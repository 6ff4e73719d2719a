package test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

func newSubscriber(t *testing.T, ctx context.Context, nc *nats.Conn, opts ...subscriber.Option) *subscriber.Subscriber {
	t.Helper()
	opts = append([]subscriber.Option{subscriber.WithLogger(testenv.Logger(t))}, opts...)
	sub, err := subscriber.New(ctx, nc, appA, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub
}

func TestSubscriberWaitsForFirstToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)

	// The service starts before any refresher ever ran: no bucket yet.
	type result struct {
		sub *subscriber.Subscriber
		err error
	}
	started := make(chan result, 1)
	go func() {
		sub, err := subscriber.New(ctx, testenv.Connect(t, srv.ClientURL()), appA)
		started <- result{sub, err}
	}()
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url})

	r := <-started
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.sub.Close()
	tok := r.sub.Token()
	if tok.Value != fake.Current(appA) || tok.Revision == 0 || tok.Expired(time.Now()) {
		t.Errorf("first token %+v, WeChat's current is %.12q...", tok, fake.Current(appA))
	}
}

func TestSubscriberNewGivesUpWithItsContext(t *testing.T) {
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := subscriber.New(ctx, nc, appA)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New without a refresher: %v, want a deadline error", err)
	}
	if !strings.Contains(err.Error(), appA) || !errors.Is(err, kv.ErrNoBucket) {
		t.Errorf("error %q should name the app and the missing bucket", err)
	}
}

func TestSubscriberFollowsRotation(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{})
	rotations := make(chan subscriber.Token, 8)
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnRotate(func(_ *subscriber.Subscriber, tok subscriber.Token) { rotations <- tok }))
	first := <-rotations
	<-sub.Updated()
	if first != sub.Token() {
		t.Fatalf("OnRotate got %+v, Token() is %+v", first, sub.Token())
	}

	sys.fake.Issue(appA) // WeChat no longer accepts the token
	start := time.Now()
	reply := request(t, ctx, sys.nc, appA, kv.RefreshRequest{StaleRevision: revision(first.Revision)})
	if reply.Error != nil || !reply.Refreshed {
		t.Fatalf("refresh: %+v", reply)
	}
	select {
	case <-sub.Updated():
	case <-ctx.Done():
		t.Fatal("no update after the rotation")
	}
	t.Logf("subscriber held the new token %s after the refresh reply was sent", time.Since(start))
	tok := sub.Token()
	if tok.Revision != reply.Revision || tok.Value != sys.fake.Current(appA) {
		t.Errorf("after rotation Token() = revision %d %.12q..., want revision %d %.12q...",
			tok.Revision, tok.Value, reply.Revision, sys.fake.Current(appA))
	}
	if got := <-rotations; got != tok {
		t.Errorf("OnRotate got %+v, want %+v", got, tok)
	}
}

func TestSubscriberRefresh(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{})
	sub := newSubscriber(t, ctx, sys.nc)
	stale := sub.Token()

	sys.fake.Issue(appA)
	fresh, err := sub.Refresh(ctx, stale.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Revision <= stale.Revision || sub.Token() != fresh {
		t.Fatalf("Refresh returned revision %d (held %d), stale was %d", fresh.Revision, sub.Token().Revision, stale.Revision)
	}
	if ok, code := sys.fake.Valid(fresh.Value); !ok {
		t.Errorf("WeChat rejects the refreshed token with %d", code)
	}
	// A second service reporting the same stale revision gets the new token
	// without another fetch.
	calls := sys.fake.Calls(appA)
	again, err := sub.Refresh(ctx, stale.Revision)
	if err != nil || again != fresh {
		t.Errorf("second Refresh of revision %d: %+v, %v", stale.Revision, again, err)
	}
	if got := sys.fake.Calls(appA); got != calls {
		t.Errorf("second Refresh made %d upstream calls", got-calls)
	}
}

func TestTransportRecoversFromRejectedToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{})
	nc, fake, url := sys.nc, sys.fake, sys.wechatURL
	sub := newSubscriber(t, ctx, nc)
	client := &http.Client{Transport: sub.Transport(nil)}
	stale := sub.Token()

	get := func() map[string]any {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/cgi-bin/getcallbackip", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var answer map[string]any
		if err := json.Unmarshal(body, &answer); err != nil {
			t.Fatalf("answer %q: %v", body, err)
		}
		return answer
	}
	if answer := get(); answer["ip_list"] == nil {
		t.Fatalf("with a valid token: %v", answer)
	}

	fake.Issue(appA) // someone fetched behind our back: our token is dead
	if ok, code := fake.Valid(stale.Value); ok || code != 40001 {
		t.Fatalf("stale token: valid %v, errcode %d", ok, code)
	}
	calls := fake.Calls(appA)
	if answer := get(); answer["ip_list"] == nil {
		t.Fatalf("Transport did not recover from 40001: %v", answer)
	}
	if got := fake.Calls(appA) - calls; got != 1 {
		t.Errorf("recovery cost %d upstream calls, want 1", got)
	}
	if sub.Token().Revision <= stale.Revision {
		t.Errorf("subscriber still holds revision %d", sub.Token().Revision)
	}
}

func TestTransportPassesOtherAnswersThrough(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	sub := newSubscriber(t, ctx, sys.nc)
	// An answer that is not a token rejection, and a body too long to be an
	// error answer, come back untouched and cause no refresh.
	long := strings.Repeat("x", 100_000)
	backend := func(req *http.Request) (*http.Response, error) {
		if req.URL.Query().Get("access_token") != sub.Token().Value {
			t.Errorf("request without the current token: %s", req.URL.Redacted())
		}
		body := `{"errcode":45009,"errmsg":"quota"}`
		if req.URL.Path == "/long" {
			body = long
		}
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: -1, Request: req}, nil
	}
	client := &http.Client{Transport: sub.Transport(roundTripFunc(backend))}
	for path, want := range map[string]string{"/quota": `{"errcode":45009,"errmsg":"quota"}`, "/long": long} {
		resp, err := client.Get("http://wechat.invalid" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != want {
			t.Errorf("%s: body of %d bytes changed", path, len(body))
		}
	}
	// No refresh was asked for: a forced one would have made WeChat
	// check the token (and fetch none, since it works).
	if calls, checks := sys.fake.Calls(appA), sys.fake.Checks(appA); calls != 1 || checks != 0 {
		t.Errorf("%d upstream calls and %d token checks, want 1 and 0", calls, checks)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestThousandCharacterTokenRoundTrips(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{TokenLength: 1000}, publisher.Config{})
	sub := newSubscriber(t, ctx, sys.nc)
	tok := sub.Token()
	if len(tok.Value) != 1000 || tok.Value != sys.fake.Current(appA) {
		t.Errorf("token of %d characters, want WeChat's 1000-character token", len(tok.Value))
	}
}

// TestSubscriberKeepsLastGoodTokenOverGarbage: a value that does not decode
// is reported and ignored, whichever way it reaches the subscriber; and the
// refresher replaces garbage in the bucket at once.
func TestSubscriberKeepsLastGoodTokenOverGarbage(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{Schedule: "@every 1h"})
	// What the subscriber holds when it reports a problem, taken in the
	// callback: the refresher repairs the bucket within milliseconds.
	type report struct {
		err, held error
		token     subscriber.Token
	}
	reports := make(chan report, 8)
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnError(func(s *subscriber.Subscriber, err error) {
		reports <- report{err: err, held: s.Err(), token: s.Token()}
	}))
	good := sub.Token()
	<-sub.Updated() // the first token's notification
	expectReport := func(what string) {
		t.Helper()
		select {
		case r := <-reports:
			if !errors.Is(r.err, kv.ErrInvalidRecord) || !errors.Is(r.held, kv.ErrInvalidRecord) {
				t.Errorf("%s: reported %v (Err() %v), want an invalid record", what, r.err, r.held)
			}
			if r.token != good {
				t.Errorf("%s: token changed to %+v", what, r.token)
			}
		case <-ctx.Done():
			t.Fatalf("%s was not reported", what)
		}
	}

	// A value message that does not decode.
	sys.nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, good.Revision+1000, []byte("<html>not a token</html>")))
	expectReport("a garbage value message")

	// Garbage in the bucket: the refresher replaces it, and the subscriber
	// gets the new token without ever holding the garbage.
	b := testenv.Bucket(t, ctx, sys.nc)
	if _, err := b.Put(ctx, appA, []byte("<html>not a token</html>")); err != nil {
		t.Fatal(err)
	}
	tok := awaitNewer(t, ctx, sub, good.Revision)
	if tok.Value != sys.fake.Current(appA) || tok.Value == good.Value {
		t.Errorf("after the refresher's repair: %+v", tok)
	}
	if sub.Err() != nil {
		t.Errorf("Err() = %v after a good token", sub.Err())
	}
}

// TestSubscriberReportsGarbageItReads: garbage found by a watch, or by the
// read at start, is reported while the subscriber waits for a good token,
// in its log; OnError, which starts once New has returned, is not told of
// a problem New overcame.
func TestSubscriberReportsGarbageItReads(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	for name, opts := range map[string]jetstream.KeyValueConfig{
		"read at start": {Bucket: "published"},
		"watch":         {Bucket: "watched"},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := js.CreateKeyValue(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if name == "read at start" {
				if b, err = bucket.Open(ctx, js, bucket.Config{Name: opts.Bucket}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := b.Put(ctx, appA, []byte("garbage")); err != nil {
				t.Fatal(err)
			}
			problems := make(chan error, 8)
			started := make(chan *subscriber.Subscriber, 1)
			logs := newNotifyingBuffer()
			go func() {
				sub, err := subscriber.New(ctx, nc, appA, subscriber.WithBucket(opts.Bucket), subscriber.WithLogger(textLogger(logs)),
					subscriber.OnError(func(_ *subscriber.Subscriber, err error) { problems <- err }))
				if err != nil {
					t.Error(err)
				}
				started <- sub
			}()
			// Seen while New waits, in the log.
			if err := logs.waitFor(ctx, "invalid token record"); err != nil {
				t.Fatalf("the garbage was not reported while New waited: %v", err)
			}
			data, _ := kv.EncodeCredential(kv.NewCredential(appA, "good", time.Hour, time.Now()))
			if _, err := b.Put(ctx, appA, data); err != nil {
				t.Fatal(err)
			}
			if name == "read at start" {
				// Nothing announces a hand-written value; a refresh would
				// read it. Here the subscriber is still waiting: tell it.
				rev, _ := b.Get(ctx, appA)
				nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, rev.Revision(), data))
			}
			sub := <-started
			if sub == nil {
				t.FailNow()
			}
			defer sub.Close()
			if sub.Token().Value != "good" {
				t.Errorf("token %q", sub.Token().Value)
			}
			// New overcame it: OnError is not told of it afterwards.
			select {
			case err := <-problems:
				t.Errorf("OnError got %v, a problem from before New returned", err)
			default:
			}
		})
	}
}

func TestSubscriberClose(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	sub, err := subscriber.New(ctx, sys.nc, appA)
	if err != nil {
		t.Fatal(err)
	}
	tok := sub.Token()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := sub.Refresh(ctx, tok.Revision); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Refresh after Close: %v, want ErrClosed", err)
	}
	if sub.Token() != tok {
		t.Errorf("Token after Close changed")
	}
}

// TestOnRotateMayRefresh: a callback that itself refreshes (a WeChat call
// through Transport that sees 40001, say) must not deadlock the subscriber.
func TestOnRotateMayRefresh(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{MinForceInterval: time.Nanosecond})
	refreshed := make(chan error, 1)
	var once sync.Once
	var first atomic.Uint64
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnRotate(func(s *subscriber.Subscriber, tok subscriber.Token) {
		if first.CompareAndSwap(0, tok.Revision) {
			return // the first token
		}
		once.Do(func() {
			sys.fake.Issue(appA) // this token is rejected too
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := s.Refresh(rctx, tok.Revision)
			refreshed <- err
		})
	}))
	sys.fake.Issue(appA)
	if _, err := sub.Refresh(ctx, sub.Token().Revision); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refreshed:
		if err != nil {
			t.Fatalf("Refresh inside OnRotate: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Refresh inside OnRotate never returned")
	}
	if tok := sub.Token(); tok.Value != sys.fake.Current(appA) {
		t.Errorf("subscriber holds revision %d, not WeChat's current token", tok.Revision)
	}
}

// TestRefreshLooksPastTheRejectedTokenWrittenAgain: a repaired bucket
// gives back the token it held at a newer revision. A service that saw
// that token rejected at the older revision must get a new token from
// Refresh, not the same one at the newer revision.
func TestRefreshLooksPastTheRejectedTokenWrittenAgain(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{MinForceInterval: time.Nanosecond})
	first := leading(t, ctx, sys)
	sub := newSubscriber(t, ctx, sys.nc)
	bucket := testenv.Bucket(t, ctx, sys.nc)
	again, err := bucket.Put(ctx, appA, first.Value()) // the same record, as a repair writes it back
	if err != nil {
		t.Fatal(err)
	}
	held := awaitNewer(t, ctx, sub, again-1)
	rejected := held.Value
	sys.fake.Issue(appA) // WeChat ends it
	fresh, err := sub.Refresh(ctx, first.Revision())
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Value == rejected || fresh.Value != sys.fake.Current(appA) {
		t.Errorf("Refresh(%d) gave revision %d, the rejected token again; want WeChat's new one", first.Revision(), fresh.Revision)
	}
}
