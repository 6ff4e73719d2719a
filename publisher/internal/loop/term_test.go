package loop

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// fakeLease is a leadership the test controls.
type fakeLease struct {
	lostCh chan struct{}
	left   time.Duration
}

func (f *fakeLease) Lost() <-chan struct{} { return f.lostCh }

// Covers: the lease is held, and covers calls shorter than what is left.
func (f *fakeLease) Covers(_ context.Context, d time.Duration) bool { return f.left >= d }

// hangingWeChat answers nothing: each token request waits until the client
// gives up. started is closed at the first request; calls counts them.
func hangingWeChat(t *testing.T) (url string, started <-chan struct{}, calls *atomic.Int64) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	calls = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/token" {
			calls.Add(1)
			once.Do(func() { close(ch) })
		}
		<-r.Context().Done()
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections() // a failed test must not wait for hung requests
		srv.Close()
	})
	return srv.URL, ch, calls
}

// leadingLoop leads with the loop of wx1, an app of the test kind whose
// fetches take up to an hour, on a lease the test controls.
func leadingLoop(t *testing.T, ctx context.Context, url string, lease *fakeLease) (*testLeader, <-chan error) {
	t.Helper()
	nc, js := natstest.JetStream(t)
	c := New(testConfig(nc, js, func(cfg *Config) { cfg.UpstreamTimeout = time.Hour }))
	c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: newTestKind(t, url, "wx1", "s")}})
	b, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Lead(ctx, b, lease) }()
	return &testLeader{c: c, nc: nc, js: js, url: url, bucket: b}, done
}

// TestLeaseLostWhileDrainingCutsWorkShort: at shutdown the leader lets
// fetches under way finish; if its lease is lost meanwhile, they must stop
// at once, as at any other time. Here the fetch would otherwise wait for
// its one-hour timeout.
func TestLeaseLostWhileDrainingCutsWorkShort(t *testing.T) {
	testCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	url, started, _ := hangingWeChat(t)
	lease := &fakeLease{lostCh: make(chan struct{}), left: 2 * time.Hour}
	ctx, shutdown := context.WithCancel(context.Background())
	_, done := leadingLoop(t, ctx, url, lease)
	select {
	case <-started: // a fetch is under way
	case <-testCtx.Done():
		t.Fatal("no fetch started")
	}
	shutdown()          // lead drains, waiting for the fetch
	close(lease.lostCh) // and the lease is lost meanwhile
	select {
	case <-done:
	case <-testCtx.Done():
		t.Fatal("the fetch kept running after the lease was lost")
	}
}

// TestNoFetchTheLeaseMightNotCover: with less lease left than one upstream
// timeout, no fetch starts; the request is answered unavailable.
func TestNoFetchTheLeaseMightNotCover(t *testing.T) {
	testCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	url, _, calls := hangingWeChat(t)
	lease := &fakeLease{lostCh: make(chan struct{}), left: time.Minute} // less than the 1h timeout
	ctx, shutdown := context.WithCancel(context.Background())
	defer shutdown()
	l, _ := leadingLoop(t, ctx, url, lease)
	var reply kv.RefreshReply
	for {
		msg, err := l.nc.RequestWithContext(testCtx, kv.Subjects{}.Refresh("wx1"), nil)
		if err == nil {
			json.Unmarshal(msg.Data, &reply)
			break
		}
		if testCtx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for the endpoint to be served
	}
	if reply.Error == nil || reply.Error.Code != kv.CodeUnavailable {
		t.Errorf("reply %+v, want unavailable", reply)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("%d fetches started with too little lease left", n)
	}
}

// doubtfulLease is a lease in doubt until confirm: asked receives (without
// blocking) each time a fetch asks whether it is held.
type doubtfulLease struct {
	fakeLease
	held  atomic.Bool
	next  chan struct{}
	asked chan struct{}
}

// Covers waits, as the lease's fence does, until the lease is confirmed.
func (d *doubtfulLease) Covers(ctx context.Context, left time.Duration) bool {
	if !d.held.Load() {
		select {
		case d.asked <- struct{}{}:
		default:
		}
		select {
		case <-d.next:
		case <-ctx.Done():
			return false
		}
	}
	return d.fakeLease.Covers(ctx, left)
}

func (d *doubtfulLease) confirm() {
	d.held.Store(true)
	close(d.next)
}

// TestFetchWaitsWhileTheLeaseIsInDoubt: a fetch that falls due while the
// lease is in doubt (a renewal failed or is late, NATS disconnected) does
// not start, and goes as soon as a renewal confirms the lease.
func TestFetchWaitsWhileTheLeaseIsInDoubt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, nil)
	lease := &doubtfulLease{fakeLease: fakeLease{lostCh: make(chan struct{}), left: time.Hour},
		next: make(chan struct{}), asked: make(chan struct{}, 1)}
	led := make(chan error, 1)
	termCtx, endTerm := context.WithCancel(ctx)
	go func() { led <- leader.c.Lead(termCtx, leader.bucket, lease) }()
	defer func() {
		endTerm()
		<-led
	}()

	select { // the first token is due at once
	case <-lease.asked:
	case <-ctx.Done():
		t.Fatal("no fetch asked whether the lease is held")
	}
	if n := leader.fake.Calls("wx1"); n != 0 {
		t.Fatalf("%d fetches while the lease was in doubt", n)
	}
	lease.confirm()
	if err := leader.fake.WaitCalls(ctx, "wx1", 1); err != nil {
		t.Fatalf("no fetch once the lease was confirmed: %v", err)
	}
}
