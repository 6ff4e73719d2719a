package test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// upstreamLog records which replica called WeChat when.
type upstreamLog struct {
	mu    sync.Mutex
	calls []upstreamCall
}

type upstreamCall struct {
	replica string
	at      time.Time
}

// client returns an HTTP client that records replica's calls.
func (l *upstreamLog) client(replica string) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/cgi-bin/token" {
			l.mu.Lock()
			l.calls = append(l.calls, upstreamCall{replica, time.Now()})
			l.mu.Unlock()
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
}

func (l *upstreamLog) snapshot() []upstreamCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]upstreamCall(nil), l.calls...)
}

// countRotations runs n refreshers for one app with 2s tokens until the
// bucket saw at least rotations new values, stops them, and returns the
// upstream calls made and the values stored.
func countRotations(t *testing.T, replicas, rotations int) (calls, stored int) {
	t.Helper()
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 2 * time.Second})
	apps := testenv.Apps(fake, appA)
	// Watched before any refresher starts, so that every value stored is
	// seen, the first included.
	nc := testenv.Connect(t, srv.ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	entries := testenv.Entries(t, b, appA)
	var running []*testenv.Running
	for range replicas {
		running = append(running, testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()),
			publisher.Config{Apps: apps, UpstreamURL: url, LeaseTTL: 2 * time.Second, UpstreamTimeout: time.Second}))
	}
	var last uint64
	for range rotations {
		last = testenv.Next(t, ctx, entries).Revision()
		leaders := 0
		for _, r := range running {
			if r.Leading() {
				leaders++
			}
		}
		if leaders != 1 {
			t.Errorf("%d replicas lead at once", leaders)
		}
	}
	// The next rotation may be under way: stop, then count both sides.
	// Standbys first, so that no stop hands the lease over.
	for _, r := range running {
		if !r.Leading() {
			r.Stop()
		}
	}
	for _, r := range running {
		r.Stop() // the leader; Stop again does nothing
	}
	e, err := b.Get(ctx, appA)
	if err != nil {
		t.Fatal(err)
	}
	stored = rotations
	if e.Revision() > last {
		stored += testenv.CountUpTo(t, ctx, entries, e.Revision())
	}
	return fake.Calls(appA), stored
}

// TestReplicasCallWeChatAsOneDoes: three replicas on one NATS make exactly
// the calls one replica makes, one per rotation.
func TestReplicasCallWeChatAsOneDoes(t *testing.T) {
	const rotations = 5
	one, oneStored := countRotations(t, 1, rotations)
	three, threeStored := countRotations(t, 3, rotations)
	t.Logf("upstream calls: %d with one replica for %d tokens, %d with three for %d", one, oneStored, three, threeStored)
	if one != oneStored || three != threeStored {
		t.Errorf("upstream calls: %d with one replica for %d tokens stored, %d with three for %d; want one call per token",
			one, oneStored, three, threeStored)
	}
}

// TestPartitionedLeaderStopsCallingWeChat cuts the leader off from NATS
// while WeChat stays reachable. It must stop calling WeChat before its lease
// could pass to the standby, so the two never call in the same period, and
// the standby takes over and keeps the token fresh.
func TestPartitionedLeaderStopsCallingWeChat(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 2 * time.Second})
	apps := testenv.Apps(fake, appA)
	const ttl = 2 * time.Second
	var calls upstreamLog
	proxy := testenv.NewProxy(t, srv.Addr().String())

	leader := testenv.Refresher(t, testenv.Connect(t, proxy.URL()), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: 500 * time.Millisecond, Instance: "a", HTTPClient: calls.client("a")})
	nc := testenv.Connect(t, srv.ClientURL())
	bucket := testenv.Bucket(t, ctx, nc)
	entries := testenv.Entries(t, bucket, appA)
	testenv.Next(t, ctx, entries) // a leads and wrote the first token
	if !leader.Leading() {
		t.Fatal("the first replica does not lead")
	}
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: 500 * time.Millisecond, Instance: "b", HTTPClient: calls.client("b")})

	leases := leaseHolders(t, ctx, nc)
	proxy.Cut()
	cut := time.Now()
	// b takes over and writes tokens of its own.
	for {
		testenv.Next(t, ctx, entries)
		if all := calls.snapshot(); all[len(all)-1].replica == "b" {
			break
		}
	}
	if leader.Leading() {
		t.Error("the partitioned replica still believes it leads")
	}
	var lastA, firstB time.Time
	for _, c := range calls.snapshot() {
		switch {
		case c.replica == "a":
			lastA = c.at
		case firstB.IsZero():
			firstB = c.at
		}
	}
	t.Logf("partition at 0s; a's last call at %s, b's first call at %s",
		lastA.Sub(cut).Round(time.Millisecond), firstB.Sub(cut).Round(time.Millisecond))
	if !lastA.Before(firstB) {
		t.Errorf("a called WeChat at %s, after b's first call at %s", lastA, firstB)
	}
	// The lease a could have held at most until its last renewal plus the
	// TTL (server time): every call of a's must come before that.
	events := awaitHolder(t, ctx, leases, "b")
	if last := lastRenewal(events, "a"); last.IsZero() {
		t.Error("no renewal by a seen")
	} else if deadline := last.Add(ttl); !lastA.Before(deadline) {
		t.Errorf("a called WeChat at %s, after its lease could have lapsed at %s", lastA, deadline)
	}
}

// TestCleanStopHandsOverAtOnce: a leader that stops cleanly releases the
// lease, and the standby leads long before the lease would have lapsed.
func TestCleanStopHandsOverAtOnce(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	const ttl = 10 * time.Second
	cfg := publisher.Config{Apps: apps, UpstreamURL: url, LeaseTTL: ttl}
	first := testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), cfg)
	nc := testenv.Connect(t, srv.ClientURL())
	awaitEndpoint(t, ctx, nc, appA)
	cfg.Instance = "second"
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), cfg)
	leases := leaseHolders(t, ctx, nc)

	stopped := time.Now()
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	events := awaitHolder(t, ctx, leases, "second")
	t.Logf("standby leads %s after the leader stopped (lease TTL %s)", time.Since(stopped).Round(time.Millisecond), ttl)
	if !released(events) {
		t.Error("the standby leads, but the stopped leader never released the lease")
	}
	if reply := awaitEndpoint(t, ctx, nc, appA); reply.Error != nil {
		t.Errorf("new leader answers %+v", reply)
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d upstream calls, want 1: the new leader reuses the token", got)
	}
}

// leaseEvent is a change of the lease key, stamped by the server.
type leaseEvent struct {
	instance string // the holder; "" for a release (delete marker)
	at       time.Time
}

// leaseHolders follows the lease key and sends every change of it.
func leaseHolders(t *testing.T, ctx context.Context, nc *nats.Conn) <-chan leaseEvent {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan leaseEvent, 1024)
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: kv.LeaseKey, OnEntry: func(e jetstream.KeyValueEntry) {
		ev := leaseEvent{at: e.Created()}
		if e.Operation() == jetstream.KeyValuePut {
			h, err := kv.DecodeLeaseHolder(e.Value())
			if err != nil {
				return
			}
			ev.instance = h.Instance
		}
		select {
		case events <- ev:
		default: // nobody reads: drop rather than block the follower
		}
	}})
	return events
}

// awaitHolder waits until the lease names instance, and returns what
// happened to the lease on the way, that event last.
func awaitHolder(t *testing.T, ctx context.Context, events <-chan leaseEvent, instance string) []leaseEvent {
	t.Helper()
	var seen []leaseEvent
	for {
		select {
		case ev := <-events:
			seen = append(seen, ev)
			if ev.instance == instance {
				return seen
			}
		case <-ctx.Done():
			t.Fatalf("%s never held the lease", instance)
		}
	}
}

// lastRenewal is the time of the last event of instance.
func lastRenewal(events []leaseEvent, instance string) time.Time {
	var at time.Time
	for _, ev := range events {
		if ev.instance == instance {
			at = ev.at
		}
	}
	return at
}

// released reports whether the lease was released (deleted) among events.
func released(events []leaseEvent) bool {
	for _, ev := range events {
		if ev.instance == "" {
			return true
		}
	}
	return false
}

// TestReplicaWithShorterLeaseTTLDoesNotTakeOver: a replica started with a
// shorter --lease-ttl (a rolling deploy that changes it, say) must not
// shorten the running leader's lease under it and lead beside it.
func TestReplicaWithShorterLeaseTTLDoesNotTakeOver(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	first := testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url, LeaseTTL: 10 * time.Second, Instance: "long"})
	nc := testenv.Connect(t, srv.ClientURL())
	awaitEndpoint(t, ctx, nc, appA)

	logs := newNotifyingBuffer()
	second := testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: 2 * time.Second, UpstreamTimeout: time.Second, Instance: "short", Logger: textLogger(logs)})
	if err := logs.waitFor(ctx, "standing by"); err != nil {
		t.Fatalf("the second replica never stood by:\n%s", logs.String())
	}
	if !first.Leading() || second.Leading() {
		t.Errorf("leading: first %v, second %v; want only the first", first.Leading(), second.Leading())
	}
	if !strings.Contains(logs.String(), "using the lease bucket's TTL") {
		t.Errorf("the TTL mismatch was not logged:\n%s", logs.String())
	}
}
