package test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// returns fails the test unless f returns within d.
func returns(t *testing.T, what string, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
}

// garbage publishes a value message for appA that does not decode: the
// subscriber reports it, and keeps its token.
func garbage(t *testing.T, sys system, after uint64) {
	t.Helper()
	if err := sys.nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, after+1, []byte("not a record"))); err != nil {
		t.Fatal(err)
	}
}

// TestCloseFromACallbackReturns: Close called from OnRotate or OnError
// returns (it used to wait for the very goroutine it ran on), the
// subscriber is closed, and Done is closed once the callback has returned.
func TestCloseFromACallbackReturns(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	for _, tc := range []struct {
		name  string
		opt   func(closed chan<- error) subscriber.Option
		cause func(sub *subscriber.Subscriber)
	}{
		{"OnRotate", func(closed chan<- error) subscriber.Option {
			return subscriber.OnRotate(func(s *subscriber.Subscriber, _ subscriber.Token) { closed <- s.Close() })
		}, func(*subscriber.Subscriber) {}}, // the first token
		{"OnError", func(closed chan<- error) subscriber.Option {
			return subscriber.OnError(func(s *subscriber.Subscriber, _ error) { closed <- s.Close() })
		}, func(sub *subscriber.Subscriber) { garbage(t, sys, sub.Token().Revision) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closed := make(chan error, 1)
			sub, err := subscriber.New(ctx, sys.nc, appA, tc.opt(closed))
			if err != nil {
				t.Fatal(err)
			}
			tc.cause(sub)
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close called from the callback did not return")
			}
			select {
			case <-sub.Done():
			case <-ctx.Done():
				t.Fatal("Done not closed after the callback returned")
			}
			if _, err := sub.Current(); !errors.Is(err, subscriber.ErrClosed) {
				t.Errorf("Current after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// settlesTo waits until no more than n goroutines run, for at most 5s
// (goroutines that were told to end take a moment to), and returns how
// many run then.
func settlesTo(n int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := runtime.NumGoroutine()
		if got <= n || time.Now().After(deadline) {
			return got
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling a count that only goes down
	}
}

// TestCloseEndsEverything: after Close, Updated is closed (a `for range`
// over it ends), Done is closed, and no goroutine of the subscriber is
// left, whether it follows published values or, for a bucket that does not
// announce them, a KV watch. Close is idempotent.
func TestCloseEndsEverything(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	leading(t, ctx, sys)
	t.Run("published values", func(t *testing.T) { closeEndsEverything(t, ctx, sys.nc) })
	t.Run("KV watch", func(t *testing.T) {
		js, _ := jetstream.New(sys.nc)
		b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "watched"})
		if err != nil {
			t.Fatal(err)
		}
		putRecord(t, ctx, b, "watched-token", time.Hour)
		closeEndsEverything(t, ctx, sys.nc, subscriber.WithBucket("watched"))
	})
}

func closeEndsEverything(t *testing.T, ctx context.Context, nc *nats.Conn, opts ...subscriber.Option) {
	before := goroutines()
	sub, err := subscriber.New(ctx, nc, appA, append(opts,
		subscriber.OnRotate(func(*subscriber.Subscriber, subscriber.Token) {}),
		subscriber.OnError(func(*subscriber.Subscriber, error) {}))...)
	if err != nil {
		t.Fatal(err)
	}
	ranged := make(chan struct{})
	go func() {
		defer close(ranged)
		for range sub.Updated() {
		}
	}()
	returns(t, "Close", 10*time.Second, func() {
		if err := sub.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	returns(t, "a second Close", time.Second, func() { sub.Close() })
	select {
	case <-ranged:
	case <-ctx.Done():
		t.Fatal("for range sub.Updated() did not end with Close")
	}
	select {
	case <-sub.Done():
	default:
		t.Error("Done not closed when Close returned")
	}
	if after := settlesTo(before); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before New, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestCurrentSaysWhatIsWrong: Current reports a token past its expiry
// (the refresher stopped replacing it) and a closed subscriber, while
// Token keeps returning the last token.
func TestCurrentSaysWhatIsWrong(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	refresher := testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url})
	sub := newSubscriber(t, ctx, nc)
	if _, err := sub.Current(); err != nil {
		t.Fatalf("Current with a fresh token: %v", err)
	}
	// The refresher stops, and the token it left has expired: written by
	// hand, fetched three hours ago for two.
	refresher.Stop()
	b := testenv.Bucket(t, ctx, nc)
	data, _ := kv.EncodeCredential(kv.NewCredential(appA, "an-expired-token", 2*time.Hour, time.Now().Add(-3*time.Hour)))
	rev, err := b.Put(ctx, appA, data)
	if err != nil {
		t.Fatal(err)
	}
	nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, rev, data)) // nobody announces a hand-written value
	held := awaitNewer(t, ctx, sub, sub.Token().Revision)
	tok, err := sub.Current()
	if !errors.Is(err, subscriber.ErrExpired) || tok != held {
		t.Errorf("Current past expiry: %+v, %v; want the token and ErrExpired", tok, err)
	}
	sub.Close()
	if tok, err := sub.Current(); !errors.Is(err, subscriber.ErrClosed) || tok != held {
		t.Errorf("Current after Close: %+v, %v; want the token and ErrClosed", tok, err)
	}
	if sub.Token() != held {
		t.Error("Token changed after Close")
	}
}

// TestCallbacksHoldNothingBack: a slow OnError does not hold up delivery
// (it used to run under the lock that delivery takes), and an OnError that
// refreshes does not deadlock.
func TestCallbacksHoldNothingBack(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{MinForceInterval: time.Nanosecond})
	release := make(chan struct{})
	inCallback := make(chan struct{}, 1)
	refreshed := make(chan error, 1)
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnError(func(s *subscriber.Subscriber, _ error) {
		select {
		case inCallback <- struct{}{}:
		default:
		}
		<-release // slow, for as long as the test likes
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		sys.fake.Issue(appA)
		_, err := s.Refresh(rctx, s.Token().Revision)
		refreshed <- err
	}))
	held := sub.Token()
	garbage(t, sys, held.Revision)
	<-inCallback
	// While OnError is held up, a new token still arrives.
	sys.fake.Issue(appA)
	reply := request(t, ctx, sys.nc, appA, kv.RefreshRequest{StaleRevision: &held.Revision})
	if tok := awaitNewer(t, ctx, sub, held.Revision); tok.Revision != reply.Revision {
		t.Errorf("delivered revision %d, want %d", tok.Revision, reply.Revision)
	}
	close(release)
	select {
	case err := <-refreshed:
		if err != nil {
			t.Errorf("Refresh from OnError: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Refresh from OnError never returned")
	}
}

// TestCallbacksGetTheSubscriber: callbacks receive the subscriber New
// returns (so they need no variable set after New), and none runs for a
// New that failed.
func TestCallbacksGetTheSubscriber(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	got := make(chan *subscriber.Subscriber, 1)
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnRotate(func(s *subscriber.Subscriber, _ subscriber.Token) {
		select {
		case got <- s:
		default:
		}
	}))
	if s := <-got; s != sub {
		t.Errorf("OnRotate got %p, New returned %p", s, sub)
	}

	// No bucket at all: New gives up, having met problems; no callback.
	called := make(chan string, 2)
	empty := testenv.Connect(t, testenv.NATS(t).ClientURL())
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := subscriber.New(short, empty, appA,
		subscriber.OnRotate(func(*subscriber.Subscriber, subscriber.Token) { called <- "OnRotate" }),
		subscriber.OnError(func(*subscriber.Subscriber, error) { called <- "OnError" }))
	if !errors.Is(err, kv.ErrNoBucket) {
		t.Fatalf("New without a bucket: %v", err)
	}
	select {
	case name := <-called:
		t.Errorf("%s ran for a New that failed", name)
	default:
	}
}

// TestOptionsAreChecked: New refuses what it cannot use at once, with an
// error wrapping ErrInvalidOption, instead of failing later in a goroutine
// (a nil logger panicked there) or waiting forever (a zero timeout).
func TestOptionsAreChecked(t *testing.T) {
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	for name, opt := range map[string]subscriber.Option{
		"nil logger":           subscriber.WithLogger(nil),
		"zero timeout":         subscriber.WithRequestTimeout(0),
		"negative timeout":     subscriber.WithRequestTimeout(-time.Second),
		"empty bucket":         subscriber.WithBucket(""),
		"bucket with a dot":    subscriber.WithBucket("wechat.tokens"),
		"wildcard prefix":      subscriber.WithSubjectPrefix("wechat.>"),
		"empty prefix token":   subscriber.WithSubjectPrefix("wechat..token"),
		"nil OnRotate":         subscriber.OnRotate(nil),
		"nil OnError":          subscriber.OnError(nil),
		"nil option":           nil,
		"prefix with a space":  subscriber.WithSubjectPrefix("wechat token"),
		"bucket with a space":  subscriber.WithBucket("my bucket"),
		"bucket with a slash":  subscriber.WithBucket("a/b"),
		"bucket with a star":   subscriber.WithBucket("a*"),
		"prefix with a star":   subscriber.WithSubjectPrefix("wechat.*"),
		"prefix, empty at end": subscriber.WithSubjectPrefix("wechat."),
	} {
		t.Run(name, func(t *testing.T) {
			// A context that never ends: an option that is not refused at
			// once would leave New waiting for a token that never comes.
			var sub *subscriber.Subscriber
			var err error
			returns(t, "New", 5*time.Second, func() { sub, err = subscriber.New(context.Background(), nc, appA, opt) })
			if !errors.Is(err, subscriber.ErrInvalidOption) {
				t.Errorf("New: %v, want ErrInvalidOption", err)
			}
			if sub != nil {
				sub.Close()
			}
		})
	}
}

// TestRefreshErrorsAreTheSubscribers: a service tells the refresher's
// answers apart with the subscriber's own errors.
func TestRefreshErrorsAreTheSubscribers(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	var clock shiftedClock
	refresher := testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url,
		MinForceInterval: 3 * time.Second, Clock: publisher.Clock{Now: clock.now, AfterFunc: clock.afterFunc}})
	sub := newSubscriber(t, ctx, nc)

	check := func(name string, err error, want error) {
		t.Helper()
		var re *subscriber.RefreshError
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		} else if want != subscriber.ErrUnavailable && !errors.As(err, &re) {
			t.Errorf("%s: %v is not a *RefreshError", name, err)
		}
	}
	// A forced refresh, then another at once: rate-limited.
	fake.Issue(appA)
	first, err := sub.Refresh(ctx, sub.Token().Revision)
	if err != nil {
		t.Fatal(err)
	}
	fake.Issue(appA)
	_, err = sub.Refresh(ctx, first.Revision)
	check("a second forced refresh at once", err, subscriber.ErrRateLimited)
	if limited := (*subscriber.RefreshError)(nil); errors.As(err, &limited) && (limited.RetryAfter < time.Second || limited.RetryAfter > 3*time.Second) {
		t.Errorf("rate-limited with RetryAfter %s, want what is left of the 3s since the first forced refresh", limited.RetryAfter)
	}

	// An app this refresher does not keep, found in the bucket.
	b := testenv.Bucket(t, ctx, nc)
	const other = "wxnotmine000000001"
	data, _ := kv.EncodeCredential(kv.NewCredential(other, "someone-elses", time.Hour, time.Now()))
	if _, err := b.Put(ctx, other, data); err != nil {
		t.Fatal(err)
	}
	stranger, err := subscriber.New(ctx, nc, other)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	_, err = stranger.Refresh(ctx, stranger.Token().Revision)
	check("an app the refresher does not keep", err, subscriber.ErrUnknownApp)

	// WeChat refuses, once the interval since the last forced refresh has
	// passed on the refresher's clock: upstream.
	clock.offset.Store(int64(3 * time.Second))
	fake.Fail(appA, fakewechat.Fault{ErrCode: 40164})
	fake.Issue(appA)
	_, err = sub.Refresh(ctx, sub.Token().Revision)
	check("WeChat refusing", err, subscriber.ErrUpstream)

	// No refresher: unavailable once the context ends.
	refresher.Stop()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err = sub.Refresh(short, sub.Token().Revision)
	check("no refresher", err, subscriber.ErrUnavailable)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no refresher: %v does not wrap the context's error", err)
	}

	if !subscriber.TokenRejected(40001) || subscriber.TokenRejected(45009) {
		t.Error("TokenRejected")
	}
}

// TestCloseEndsRefresh: a Refresh under way, with a context that never
// ends, returns ErrClosed when the subscriber is closed.
func TestCloseEndsRefresh(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	refresher := testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url})
	sub := newSubscriber(t, ctx, nc)
	refresher.Stop() // nobody answers: Refresh retries for as long as its context lives
	done := make(chan error, 1)
	go func() {
		_, err := sub.Refresh(context.Background(), sub.Token().Revision)
		done <- err
	}()
	sub.Close()
	select {
	case err := <-done:
		if !errors.Is(err, subscriber.ErrClosed) {
			t.Errorf("Refresh after Close: %v, want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Refresh went on after Close")
	}
}

// TestNoCallbackStartsAfterClose: Close, called from another goroutine
// while a callback runs, returns without waiting for it, and no callback
// starts after it, not even for a problem that waited; Done closes when the
// running one returns. Several Closes at once all return.
func TestNoCallbackStartsAfterClose(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	var calls atomic.Int32
	running, release := make(chan struct{}), make(chan struct{})
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnError(func(*subscriber.Subscriber, error) {
		if calls.Add(1) == 1 {
			close(running)
			<-release
		}
	}))
	garbage(t, sys, sub.Token().Revision)
	<-running
	garbage(t, sys, sub.Token().Revision) // waits for OnError
	for range 4 {
		returns(t, "Close while a callback runs", 10*time.Second, func() { sub.Close() })
	}
	select {
	case <-sub.Done():
		t.Fatal("Done closed while a callback ran")
	default:
	}
	close(release)
	select {
	case <-sub.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed after the callback returned")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("OnError ran %d times, want 1: a callback started after Close", n)
	}
}

// TestOnErrorSkipsProblemsOvercome: a problem that waits for a slow
// OnError is dropped when a good token arrives first.
func TestOnErrorSkipsProblemsOvercome(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{MinForceInterval: time.Nanosecond})
	got := make(chan error, 8)
	running, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	sub := newSubscriber(t, ctx, sys.nc, subscriber.OnError(func(_ *subscriber.Subscriber, err error) {
		got <- err
		if first.CompareAndSwap(false, true) {
			close(running)
			<-release
		}
	}))
	held := sub.Token()
	garbage(t, sys, held.Revision)
	<-running
	garbage(t, sys, held.Revision+1) // waits, then a good token overcomes it
	sys.fake.Issue(appA)
	if _, err := sub.Refresh(ctx, held.Revision); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-got // the first problem
	// A third problem, after the good token: passed on, alone.
	garbage(t, sys, sub.Token().Revision)
	select {
	case err := <-got:
		if !errors.Is(err, kv.ErrInvalidRecord) {
			t.Errorf("OnError got %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the problem after the good token was not passed on")
	}
	select {
	case err := <-got:
		t.Errorf("OnError also got %v: a problem overcome, or one twice", err)
	default:
	}
}
