package publisher

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// TestASlowTokenBucketStallsNoPlatformUpdateOrReload: authorizers that
// come make the credentials again, on the platform bucket's follower, and
// the token bucket is read for the keys added. With the token bucket out
// of reach (its reads stalled, not refused), neither the follower (its
// next platform entry) nor a reload waits for that read.
func TestASlowTokenBucketStallsNoPlatformUpdateOrReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	gaveUp := make(chan struct{}, 1)
	app := App{AppID: component, Secret: NewSecret("s"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{app}, Logger: slog.New(onMessage("cannot read the tokens of apps just added", gaveUp))})
	if err != nil {
		t.Fatal(err)
	}
	platforms, err := r.openPlatformBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.platformBucket.Store(&platforms)
	if _, err := bucket.Open(ctx, js, r.bucketConfig()); err != nil {
		t.Fatal(err)
	}
	// The token bucket as the refresher reads it, through a relay.
	relay := newStallingRelay(t, nc.ConnectedUrl())
	far, err := nats.Connect(relay.url())
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	farJS, _ := jetstream.New(far)
	tokens, err := farJS.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	r.bucket.Store(&tokens)
	r.synced.Store(true)
	r.platformsSynced()

	relay.stall()
	defer relay.heal()
	data, _ := kv.EncodeAuthorizer(kv.Authorizer{ComponentAppID: component, AppID: authorizer, RefreshToken: "refresh", IssuedAt: time.Now()})
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		r.observePlatform(entry{key: kv.AuthorizerKey(component, authorizer), value: data, rev: 1})
	}()
	select {
	case <-followed:
	case <-ctx.Done():
		t.Fatal("the platform entry was never taken in")
	}
	select {
	case <-gaveUp:
		t.Fatal("the platform bucket's follower waited for the token bucket until the read gave up")
	default:
	}
	if r.credential(authorizer) == nil {
		t.Fatal("the authorizer is no credential")
	}
	if err := r.SetApps([]App{app}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gaveUp:
		t.Error("the reload waited for the token bucket until the read gave up")
	default:
	}
}

// stallingRelay forwards TCP connections to a NATS server; stall holds
// every byte back, closing nothing, until heal.
type stallingRelay struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	stalled bool
	flowing *sync.Cond
}

func newStallingRelay(t *testing.T, natsURL string) *stallingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := net.ResolveTCPAddr("tcp", natsURL[len("nats://"):])
	r := &stallingRelay{ln: ln, target: u.String()}
	r.flowing = sync.NewCond(&r.mu)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.heal()
	})
	return r
}

func (r *stallingRelay) url() string { return "nats://" + r.ln.Addr().String() }

func (r *stallingRelay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		go r.pipe(c, s)
		go r.pipe(s, c)
	}
}

func (r *stallingRelay) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		for r.stalled {
			r.flowing.Wait()
		}
		r.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}

func (r *stallingRelay) stall() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stalled = true
}

func (r *stallingRelay) heal() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stalled = false
	r.flowing.Broadcast()
}

// onMessage is a log handler that sends on ch, without blocking, for each
// record whose message starts with prefix.
func onMessage(prefix string, ch chan<- struct{}) slog.Handler {
	return messageHandler{prefix: prefix, ch: ch}
}

type messageHandler struct {
	prefix string
	ch     chan<- struct{}
}

func (h messageHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h messageHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h messageHandler) WithGroup(string) slog.Handler            { return h }
func (h messageHandler) Handle(_ context.Context, r slog.Record) error {
	if len(r.Message) >= len(h.prefix) && r.Message[:len(h.prefix)] == h.prefix {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
