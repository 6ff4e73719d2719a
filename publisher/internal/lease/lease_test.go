package lease

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/kv"
)

// jetStream starts an embedded JetStream server and connects to it.
func jetStream(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestLeaseLapsesWithoutRenewal: a holder that dies without releasing (no
// renewal, no delete) loses the lease to a standby about one TTL later.
func TestLeaseLapsesWithoutRenewal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	cfg := Config{TokenBucket: kv.DefaultBucket, TTL: time.Second, Replicas: 1, Logger: slog.New(slog.DiscardHandler), HasTokens: func() bool { return false }}
	cfg.Instance = "dead"
	dead, err := Open(ctx, nc, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	held, err := dead.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	close(held.stop) // the holder dies: renewals stop, nothing is deleted
	<-held.done
	last, err := dead.bucket.Get(ctx, kv.LeaseKey)
	if err != nil {
		t.Fatal(err)
	}

	cfg.Instance = "standby"
	standby, err := Open(ctx, nc, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	next, err := standby.Acquire(ctx) // bounded by ctx: the lease does lapse
	if err != nil {
		t.Fatal(err)
	}
	defer next.Release()
	taken, err := standby.bucket.Get(ctx, kv.LeaseKey)
	if err != nil {
		t.Fatal(err)
	}
	// Server timestamps: the standby got in only after the dead holder's
	// last write had lapsed.
	if gap := taken.Created().Sub(last.Created()); gap < cfg.TTL {
		t.Errorf("standby took the lease %s after the last renewal, sooner than the TTL %s", gap, cfg.TTL)
	}
}

// TestReplicaTakesOverItsOwnLease: a replica whose lease ended on its side
// while the key still holds its term (it stepped down during a NATS outage
// and the server kept, or was sent on reconnect, its last renewal) takes
// the key over at once, instead of standing by behind itself until it
// lapses. A namesake (same instance, another process) and a value with no
// term are another replica's, and wait for the lapse.
func TestReplicaTakesOverItsOwnLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	const ttl = 2 * time.Second
	cfg := Config{TokenBucket: kv.DefaultBucket, TTL: ttl, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "r0", HasTokens: func() bool { return true }}
	l, held := acquire(t, ctx, nc, js, cfg)
	close(held.stop) // its term ends here; the key keeps its last write
	<-held.done
	held.end()

	// A quarter of the TTL is far less than the wait for the lapse.
	standsBy := func(who *Lease) bool {
		attempt, stop := context.WithTimeout(ctx, ttl/4)
		defer stop()
		h, err := who.Acquire(attempt)
		if err == nil {
			h.Release()
		}
		return err != nil
	}
	said := make(chan struct{}, 1)
	namesakeCfg := cfg
	namesakeCfg.Logger = slog.New(onMessage("standing by: the lease is held under this replica's own name by another process", said))
	namesake, err := Open(ctx, nc, js, namesakeCfg)
	if err != nil {
		t.Fatal(err)
	}
	if !standsBy(namesake) {
		t.Error("a namesake took over another process's lease")
	}
	select {
	case <-said: // not "another replica leads", naming itself
	default:
		t.Error("a namesake standing by did not say that the lease is held under its own name by another process")
	}
	if standsBy(l) {
		t.Fatal("the replica stood by behind its own lease")
	}
	termless := kv.EncodeLeaseHolder(kv.LeaseHolder{Instance: "r9"})
	if _, err := l.bucket.Put(ctx, kv.LeaseKey, termless); err != nil {
		t.Fatal(err)
	}
	fresh, err := Open(ctx, nc, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !standsBy(fresh) {
		t.Error("a replica that never led took over a lease with no term")
	}
}

// TestNoSecondLeaderAfterTheLeaseBucketIsDeleted: the lease bucket is
// deleted under a leader, and a replica that starts meanwhile creates it
// again. While tokens exist a leader may be alive, so the new replica
// leaves the new bucket alone; the leader takes its lease again in it and
// keeps leading.
func TestNoSecondLeaderAfterTheLeaseBucketIsDeleted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	// A fresh deployment: the first leader takes the lease at once. Then
	// it stores tokens.
	var tokens atomic.Bool
	cfg := Config{TokenBucket: kv.DefaultBucket, TTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "leader", HasTokens: tokens.Load}
	_, held := acquire(t, ctx, nc, js, cfg)
	defer held.Release()
	tokens.Store(true)
	if err := js.DeleteKeyValue(ctx, kv.LeaseBucket(cfg.TokenBucket)); err != nil {
		t.Fatal(err)
	}
	cfg.Instance = "starting"
	other := openRetrying(t, ctx, nc, js, cfg) // creates the bucket again
	// Less than a TTL: while a leader may be alive, it may not lead.
	attempt, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	if second, err := other.Acquire(attempt); err == nil {
		second.Release()
		t.Fatal("a second replica took the lease while the leader lived")
	}
	// The leader's renewals took the lease again in the new bucket.
	for {
		if e, err := other.bucket.Get(ctx, kv.LeaseKey); err == nil {
			if h, err := kv.DecodeLeaseHolder(e.Value()); err == nil && h.Term == held.holder.Term {
				break
			}
		}
		select {
		case <-held.Lost():
			t.Fatal("the leader lost its lease")
		case <-ctx.Done():
			t.Fatal("the leader never took its lease again")
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case <-held.Lost():
		t.Error("the leader lost its lease")
	default:
	}
}

// openRetrying opens the lease bucket as the refresher's start does,
// retrying until ctx ends. Created again just after its deletion, and
// perhaps at the same moment by the leader's renewal, the bucket's create
// was once refused with "error creating store for stream" (10049), in
// five runs with both cores busy: the refresher retries, and so does this.
func openRetrying(t *testing.T, ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) *Lease {
	t.Helper()
	for {
		l, err := Open(ctx, nc, js, cfg)
		if err == nil {
			return l
		}
		t.Logf("opening the lease bucket: %v; again", err)
		select {
		case <-ctx.Done():
			t.Fatal(err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestNoLeaseBesideALeaderThatAnswers: both buckets lost, a replica that
// starts finds no token and a new lease bucket, which looks like a fresh
// deployment. A leader still serving refresh requests for the bucket
// answers discovery, and the replica leaves the lease to it.
func TestNoLeaseBesideALeaderThatAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	// A leader serves the refresh endpoint, a micro service that names
	// its token bucket, for its whole term.
	svc, err := micro.AddService(nc, micro.Config{Name: kv.ServiceName, Version: "0.0.0", Metadata: map[string]string{"bucket": kv.DefaultBucket}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	cfg := Config{TokenBucket: kv.DefaultBucket, TTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "starting", HasTokens: func() bool { return false }}
	starting, err := Open(ctx, nc, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	attempt, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	if held, err := starting.Acquire(attempt); err == nil {
		held.Release()
		t.Fatal("the starting replica took the lease beside a leader that answers")
	}
}

// TestLeaseInDoubtWhileRenewalsFail: a renewal that fails puts the lease in
// doubt at once, long before it might lapse and with NATS connected, so
// that no call to WeChat starts: the fence (Covers) holds a call back
// until the next renewal that succeeds lifts the doubt, and lets through
// only one the lease surely covers.
func TestLeaseInDoubtWhileRenewalsFail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	failed := make(chan struct{}, 16)
	cfg := Config{TokenBucket: kv.DefaultBucket, TTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1, Instance: "leader",
		Logger: slog.New(onMessage("lease renewal failed", failed)), HasTokens: func() bool { return false }}
	l, held := acquire(t, ctx, nc, js, cfg)
	defer held.Release()
	awaitConfirmed(t, ctx, held)

	// The lease stream refuses every write: the renewal fails, though the
	// server answers.
	stream, err := js.Stream(ctx, bucket.StreamName(l.name))
	if err != nil {
		t.Fatal(err)
	}
	refusing := stream.CachedInfo().Config
	accepting := refusing
	refusing.MaxMsgSize = 1
	if _, err := js.UpdateStream(ctx, refusing); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-ctx.Done():
		t.Fatal("no renewal failed")
	}
	if ok, _ := held.confirmed(); ok {
		t.Error("the lease is confirmed after a renewal failed")
	}
	if left := held.remaining(); left <= 0 || nc.Status() != nats.CONNECTED {
		t.Fatalf("lease left %s, NATS %s: the test wants a lease in doubt, not lost or disconnected", left, nc.Status())
	}
	covered := make(chan bool, 1)
	go func() { covered <- held.Covers(ctx, time.Second) }()
	select { // the next renewal fails too: the call is still held back
	case <-failed:
	case <-ctx.Done():
		t.Fatal("no second renewal failed")
	}
	select {
	case <-covered:
		t.Fatal("the fence let a call go while the lease was in doubt")
	default:
	}

	if _, err := js.UpdateStream(ctx, accepting); err != nil {
		t.Fatal(err)
	}
	awaitConfirmed(t, ctx, held)
	if !<-covered {
		t.Error("the fence refused a call of a second once the lease was confirmed")
	}
	if held.Covers(ctx, cfg.TTL) {
		t.Error("the fence let a call go that could outlast the lease")
	}
	select {
	case <-held.Lost():
		t.Error("the lease was lost")
	default:
	}
}

// awaitConfirmed waits until h is confirmed, failing if it is lost first.
func awaitConfirmed(t *testing.T, ctx context.Context, h *Held) {
	t.Helper()
	for {
		ok, next := h.confirmed()
		if ok {
			return
		}
		select {
		case <-next:
		case <-h.Lost():
			t.Fatal("the lease was lost")
		case <-ctx.Done():
			t.Fatal("the lease was never confirmed")
		}
	}
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
	if strings.HasPrefix(r.Message, h.prefix) {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// acquire opens the lease of cfg and takes it.
func acquire(t *testing.T, ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) (*Lease, *Held) {
	t.Helper()
	l, err := Open(ctx, nc, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	held, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l, held
}
