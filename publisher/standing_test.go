package publisher

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
)

// awaitedLog is a log a test waits on for a line.
type awaitedLog struct {
	lockedBuffer
	mu      sync.Mutex
	written chan struct{} // closed, and replaced, at each write
}

func newAwaitedLog() *awaitedLog { return &awaitedLog{written: make(chan struct{})} }

func (l *awaitedLog) Write(p []byte) (int, error) {
	n, err := l.lockedBuffer.Write(p)
	l.mu.Lock()
	close(l.written)
	l.written = make(chan struct{})
	l.mu.Unlock()
	return n, err
}

// await waits until the log holds s n times.
func (l *awaitedLog) await(t *testing.T, ctx context.Context, s string, n int) {
	t.Helper()
	for {
		l.mu.Lock()
		written := l.written
		l.mu.Unlock()
		if strings.Count(l.String(), s) >= n {
			return
		}
		select {
		case <-written:
		case <-ctx.Done():
			t.Fatalf("never logged %q %d times:\n%s", s, n, l.String())
		}
	}
}

// runStandingReplica runs a refresher of app on NATS at natsURL against
// the fake at wechat, its calls leaving from addr, until the test ends or
// the returned stop is called; it returns at once. tune, if any, changes
// the Config before New.
func runStandingReplica(t *testing.T, ctx context.Context, natsURL, wechat string, app App, instance, addr string, tune ...func(*Config)) (*Refresher, *awaitedLog, func()) {
	t.Helper()
	nc, _ := natstest.Connect(t, natsURL)
	logs := newAwaitedLog()
	cfg := Config{Apps: []App{app}, UpstreamURL: wechat, SourceAddr: addr,
		ProbeEvery: time.Hour, LeaseTTL: 2 * time.Second, UpstreamTimeout: time.Second, Instance: instance,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	for _, f := range tune {
		f(&cfg)
	}
	r, err := New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(run) }()
	var once sync.Once
	stopped := func() {
		once.Do(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", instance, err)
			}
		})
	}
	t.Cleanup(stopped)
	return r, logs, stopped
}

// TestReplicaThatCannotLeadDefersWhileOneThatCanStands runs two
// refreshers against one NATS and a WeChat that whitelists the address of
// one of them (127.0.0.2). The other (127.0.0.3), alone, leads; it hands
// the lease over when the good one stands, defers while it lives, and
// leads again once it stopped.
func TestReplicaThatCannotLeadDefersWhileOneThatCanStands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const appid, secret = "wxstand00000000001", "the-secret-of-the-app"
	_, wechat := goodOnlyWeChat(t, appid, secret)
	srv := natstest.Server(t, nil)
	start := func(instance, addr string) (*Refresher, *awaitedLog, func()) {
		return runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, App{AppID: appid, Secret: NewSecret(secret)}, instance, addr)
	}

	bad, badLog, _ := start("bad", "127.0.0.3")
	badLog.await(t, ctx, "this replica cannot lead "+appid+": add 127.0.0.3 to the IP whitelist", 1)
	badLog.await(t, ctx, "became leader", 1)

	good, goodLog, stopGood := start("good", "127.0.0.2")
	badLog.await(t, ctx, "handing the lease over to replica good", 1)
	goodLog.await(t, ctx, "became leader", 1)
	badLog.await(t, ctx, "standing by without campaigning: replica good", 1)
	if !good.Leading() || bad.Leading() {
		t.Fatalf("good leads %v, bad leads %v; want the good one alone", good.Leading(), bad.Leading())
	}
	if err := bad.Ready(); err == nil || !strings.Contains(err.Error(), "could not take over") {
		t.Errorf("the standby's Ready: %v, want it could not take over", err)
	}
	goodLog.await(t, ctx, "token rotated", 1)

	stopGood() // a clean stop: its key and its lease are deleted, the bad one leads at once
	badLog.await(t, ctx, "campaigning: no live replica can lead more apps than this one", 1)
	badLog.await(t, ctx, "became leader", 2)
	if err := bad.Ready(); err == nil || !strings.Contains(err.Error(), "leads, but cannot fetch") {
		t.Errorf("the lone leader's Ready: %v, want it leads but cannot fetch", err)
	}
	if n := strings.Count(badLog.String(), "level=ERROR msg=\"this replica cannot lead"); n != 1 {
		t.Errorf("%d ERROR lines for one refusal", n)
	}
}

// goodOnlyWeChat is a fake WeChat with one app whose IP whitelist holds
// the good replica's address, 127.0.0.2, alone, served until t ends.
func goodOnlyWeChat(t *testing.T, appid, secret string) (*fakewechat.Server, *httptest.Server) {
	t.Helper()
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(appid, secret)
	fake.SetWhitelist(appid, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv
}
