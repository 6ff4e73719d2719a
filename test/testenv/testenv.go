// Package testenv starts the real parts wxtoken's tests run against: an
// embedded NATS server with JetStream, reached over TCP, and the fake WeChat
// on an httptest server. Everything started is stopped at test cleanup.
package testenv

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

// Context returns a context that ends after d or at cleanup: every wait in a
// test is bounded.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// NATS starts a JetStream server on 127.0.0.1 on a free port, storing in a
// temporary directory.
func NATS(t testing.TB) *server.Server {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return StartNATS(t, opts)
}

// StartNATS starts a server with opts and shuts it down at cleanup.
func StartNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := embedded.Start(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect opens a TCP connection to url (not an in-process one, so that it
// reconnects after a server restart) and closes it at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// WeChat serves a fake WeChat with cfg and returns it with its base URL.
func WeChat(t testing.TB, cfg fakewechat.Config) (*fakewechat.Server, string) {
	t.Helper()
	fake := fakewechat.New(cfg)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv.URL
}

// Logger returns a logger that writes to the test's output until cleanup.
func Logger(t testing.TB) *slog.Logger {
	t.Helper()
	w := &cleanupWriter{w: t.Output()}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// cleanupWriter drops writes once the test is over: a goroutine that logs
// late must not fail the run.
type cleanupWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (c *cleanupWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil
	}
	return c.w.Write(p)
}

func (c *cleanupWriter) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// Running is a refresher started by Refresher.
type Running struct {
	*publisher.Refresher
	cancel context.CancelFunc
	done   chan error
}

// Stop stops the refresher and returns what Run returned. It is idempotent.
func (r *Running) Stop() error {
	r.cancel()
	err, ok := <-r.done
	if !ok {
		return nil
	}
	close(r.done)
	return err
}

// Refresher runs a refresher with cfg on nc until Stop or cleanup. Fields of
// cfg left zero get test-friendly values: a logger to the test output and a
// 2s upstream timeout.
func Refresher(t testing.TB, nc *nats.Conn, cfg publisher.Config) *Running {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	r, err := publisher.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	running := &Running{Refresher: r, cancel: cancel, done: make(chan error, 1)}
	go func() { running.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		if err := running.Stop(); err != nil {
			t.Errorf("refresher: %v", err)
		}
	})
	return running
}

// Apps registers n apps at the fake and returns them for the refresher.
func Apps(fake *fakewechat.Server, appids ...string) []publisher.App {
	apps := make([]publisher.App, len(appids))
	for i, id := range appids {
		secret := "secret-of-" + id
		fake.AddApp(id, secret)
		apps[i] = publisher.App{AppID: id, Secret: publisher.NewSecret(secret)}
	}
	return apps
}

// Bucket binds the token bucket, waiting for a refresher to create it.
func Bucket(t testing.TB, ctx context.Context, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	var last error // the last answer that was not the context's end: it says why
	for {
		b, err := kv.Bind(ctx, js, kv.DefaultBucket)
		if err == nil {
			return b
		}
		if ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("token bucket never appeared in %s: %v (the last answer before: %v)", time.Since(began).Round(time.Millisecond), err, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Entries follows key in b from the start and sends every put to the
// returned channel, until cleanup.
func Entries(t testing.TB, b jetstream.KeyValue, key string) <-chan jetstream.KeyValueEntry {
	t.Helper()
	ch := make(chan jetstream.KeyValueEntry, 1024)
	Follow(t, &kvwatch.Follower{Bucket: b, Key: key, OnEntry: func(e jetstream.KeyValueEntry) {
		if e.Operation() == jetstream.KeyValuePut {
			ch <- e
		}
	}})
	return ch
}

// Follow runs f until cleanup.
func Follow(t testing.TB, f *kvwatch.Follower) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// Next returns the next entry from ch, failing the test if ctx ends first.
func Next(t testing.TB, ctx context.Context, ch <-chan jetstream.KeyValueEntry) jetstream.KeyValueEntry {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-ctx.Done():
		t.Fatalf("no entry: %v", ctx.Err())
		return nil
	}
}

// CountUpTo takes the values ch delivers until the one at revision last
// and returns how many it took. A key's revisions do not follow one
// another (other keys are written between them: the apps' ledgers beside
// their tokens), so a key's rotations are counted on its watch.
func CountUpTo(t testing.TB, ctx context.Context, ch <-chan jetstream.KeyValueEntry, last uint64) int {
	t.Helper()
	n := 0
	for {
		e := Next(t, ctx, ch)
		n++
		if e.Revision() >= last {
			return n
		}
	}
}

// Record decodes an entry of the token bucket, failing the test if it does not.
func Record(t testing.TB, e jetstream.KeyValueEntry) kv.Credential {
	t.Helper()
	rec, err := kv.DecodeCredential(e.Key(), e.Value())
	if err != nil {
		t.Fatalf("revision %d: %v", e.Revision(), err)
	}
	return rec
}
