package test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// serveHTTP serves h on a loopback port until cleanup and returns its URL.
func serveHTTP(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

func (b *syncBuffer) logger() *slog.Logger { return textLogger(b) }

// textLogger logs everything, debug included, as text to w.
func textLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// linesWith returns the log lines that contain s.
func (b *syncBuffer) linesWith(s string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// nextEvent waits for the next message on sub and decodes it as a T.
func nextEvent[T any](t testing.TB, ctx context.Context, sub *nats.Subscription) (T, []byte) {
	t.Helper()
	var ev T
	msg, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatalf("no event on %s: %v", sub.Subject, err)
	}
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatalf("event %q: %v", msg.Data, err)
	}
	return ev, msg.Data
}

// system is a NATS server, a fake WeChat and a refresher for appA.
type system struct {
	nc        *nats.Conn
	url       string // NATS
	fake      *fakewechat.Server
	wechatURL string
}

func startSystem(t *testing.T, wechat fakewechat.Config, cfg publisher.Config) system {
	t.Helper()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, wechat)
	cfg.Apps, cfg.UpstreamURL = testenv.Apps(fake, appA), url
	testenv.Refresher(t, nc, cfg)
	return system{nc: nc, url: srv.ClientURL(), fake: fake, wechatURL: url}
}

// leading waits until the system's refresher stored appA's first token and
// answers refresh requests, and returns that token's entry.
func leading(t *testing.T, ctx context.Context, sys system) jetstream.KeyValueEntry {
	t.Helper()
	e := testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, sys.nc), appA))
	awaitEndpoint(t, ctx, sys.nc, appA)
	return e
}
