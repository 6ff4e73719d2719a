package publisher

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
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

// TestStoreNeverReplacesNewerToken: a leader deposed while it fetched
// still holds the old revision; its write must not replace the token the new
// leader stored since, which WeChat issued later.
func TestStoreNeverReplacesNewerToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := jetStream(t)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Refresher{}
	now := time.Now()
	put := func(rec kv.Credential, rev uint64) uint64 {
		data, _ := kv.EncodeCredential(rec)
		rev, err := casPut(ctx, b, "wx1", data, rev)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	base := put(kv.NewCredential("wx1", "first", 2*time.Hour, now.Add(-time.Hour)), 0)
	newer := kv.NewCredential("wx1", "new-leaders", 2*time.Hour, now)
	newRev := put(newer, base)

	deposed := kv.NewCredential("wx1", "deposed-leaders", 2*time.Hour, now.Add(-5*time.Second))
	deposedData, _ := kv.EncodeCredential(deposed)
	rev, stored, ours, err := r.store(ctx, b, "wx1", deposed, deposedData, base)
	if err != nil {
		t.Fatal(err)
	}
	if ours || rev != newRev || stored.Value != "new-leaders" {
		t.Fatalf("store over a newer token: ours %v rev %d token %q", ours, rev, stored.Value)
	}
	if e, _ := b.Get(ctx, "wx1"); e.Revision() != newRev {
		t.Fatalf("the bucket moved to revision %d", e.Revision())
	}

	// Garbage is no token: a fresh token is written over it.
	garbage, err := b.Put(ctx, "wx1", []byte("garbage"))
	if err != nil {
		t.Fatal(err)
	}
	fresh := kv.NewCredential("wx1", "fresh", 2*time.Hour, now.Add(time.Second))
	freshData, _ := kv.EncodeCredential(fresh)
	rev, stored, ours, err = r.store(ctx, b, "wx1", fresh, freshData, newRev)
	if err != nil || !ours || rev <= garbage || stored.Value != "fresh" {
		t.Fatalf("store over garbage: ours %v rev %d token %q err %v", ours, rev, stored.Value, err)
	}
}

// TestLeaseLapsesWithoutRenewal: a holder that dies without releasing (no
// renewal, no delete) loses the lease to a standby about one TTL later.
func TestLeaseLapsesWithoutRenewal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	cfg := Config{Bucket: kv.DefaultBucket, LeaseTTL: time.Second, Replicas: 1, Logger: slog.New(slog.DiscardHandler)}
	cfg.Instance = "dead"
	dead, err := openLease(ctx, nc, js, cfg, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	held, err := dead.acquire(ctx)
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
	standby, err := openLease(ctx, nc, js, cfg, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	next, err := standby.acquire(ctx) // bounded by ctx: the lease does lapse
	if err != nil {
		t.Fatal(err)
	}
	defer next.release()
	taken, err := standby.bucket.Get(ctx, kv.LeaseKey)
	if err != nil {
		t.Fatal(err)
	}
	// Server timestamps: the standby got in only after the dead holder's
	// last write had lapsed.
	if gap := taken.Created().Sub(last.Created()); gap < cfg.LeaseTTL {
		t.Errorf("standby took the lease %s after the last renewal, sooner than the TTL %s", gap, cfg.LeaseTTL)
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
	cfg := Config{Bucket: kv.DefaultBucket, LeaseTTL: ttl, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "r0"}
	hasTokens := func() bool { return true }
	l, err := openLease(ctx, nc, js, cfg, hasTokens)
	if err != nil {
		t.Fatal(err)
	}
	held, err := l.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	close(held.stop) // its term ends here; the key keeps its last write
	<-held.done
	held.end()

	// A quarter of the TTL is far less than the wait for the lapse.
	standsBy := func(who *lease) bool {
		attempt, stop := context.WithTimeout(ctx, ttl/4)
		defer stop()
		h, err := who.acquire(attempt)
		if err == nil {
			h.release()
		}
		return err != nil
	}
	namesake, err := openLease(ctx, nc, js, cfg, hasTokens)
	if err != nil {
		t.Fatal(err)
	}
	if !standsBy(namesake) {
		t.Error("a namesake took over another process's lease")
	}
	if standsBy(l) {
		t.Fatal("the replica stood by behind its own lease")
	}
	termless := kv.EncodeLeaseHolder(kv.LeaseHolder{Instance: "r9"})
	if _, err := l.bucket.Put(ctx, kv.LeaseKey, termless); err != nil {
		t.Fatal(err)
	}
	fresh, err := openLease(ctx, nc, js, cfg, hasTokens)
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
	cfg := Config{Bucket: kv.DefaultBucket, LeaseTTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "leader"}
	// A fresh deployment: the first leader takes the lease at once. Then
	// it stores tokens.
	var tokens atomic.Bool
	hasTokens := tokens.Load
	l, err := openLease(ctx, nc, js, cfg, hasTokens)
	if err != nil {
		t.Fatal(err)
	}
	held, err := l.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.release()
	tokens.Store(true)
	if err := js.DeleteKeyValue(ctx, kv.LeaseBucket(cfg.Bucket)); err != nil {
		t.Fatal(err)
	}
	cfg.Instance = "starting"
	other, err := openLease(ctx, nc, js, cfg, hasTokens) // creates the bucket again
	if err != nil {
		t.Fatal(err)
	}
	// Less than a TTL: while a leader may be alive, it may not lead.
	attempt, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	if second, err := other.acquire(attempt); err == nil {
		second.release()
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
		case <-held.lost():
			t.Fatal("the leader lost its lease")
		case <-ctx.Done():
			t.Fatal("the leader never took its lease again")
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case <-held.lost():
		t.Error("the leader lost its lease")
	default:
	}
}

// TestNoLeaseBesideALeaderThatAnswers: both buckets lost, a replica that
// starts finds no token and a new lease bucket, which looks like a fresh
// deployment. A leader still serving refresh requests for the bucket
// answers discovery, and the replica leaves the lease to it.
func TestNoLeaseBesideALeaderThatAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, Config{})
	leader.lead(t, ctx, leader.bucket)
	leader.refresh(t, ctx, nil) // it serves

	cfg := Config{Bucket: kv.DefaultBucket, LeaseTTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1,
		Logger: slog.New(slog.DiscardHandler), Instance: "starting"}
	starting, err := openLease(ctx, leader.nc, leader.js, cfg, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	attempt, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	if held, err := starting.acquire(attempt); err == nil {
		held.release()
		t.Fatal("the starting replica took the lease beside a leader that answers")
	}
}

// TestLeaseInDoubtWhileRenewalsFail: a renewal that fails puts the lease in
// doubt at once, long before it might lapse and with NATS connected, so
// that no call to WeChat starts; the next renewal that succeeds lifts the
// doubt.
func TestLeaseInDoubtWhileRenewalsFail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	failed := make(chan struct{}, 16)
	cfg := Config{Bucket: kv.DefaultBucket, LeaseTTL: 3 * time.Second, UpstreamTimeout: time.Second, Replicas: 1, Instance: "leader",
		Logger: slog.New(onMessage("lease renewal failed", failed))}
	l, err := openLease(ctx, nc, js, cfg, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	held, err := l.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.release()
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

	if _, err := js.UpdateStream(ctx, accepting); err != nil {
		t.Fatal(err)
	}
	awaitConfirmed(t, ctx, held)
	select {
	case <-held.lost():
		t.Error("the lease was lost")
	default:
	}
}

// awaitConfirmed waits until h is confirmed, failing if it is lost first.
func awaitConfirmed(t *testing.T, ctx context.Context, h *heldLease) {
	t.Helper()
	for {
		ok, next := h.confirmed()
		if ok {
			return
		}
		select {
		case <-next:
		case <-h.lost():
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

// TestLeftoverTokenGoesOnlyOverAnOlderOne: a token a deposed leader could
// not store is written between terms over the one it replaced, but never
// over a newer one another leader stored meanwhile, seen or not.
func TestLeftoverTokenGoesOnlyOverAnOlderOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, Config{})
	b, a := leader.bucket, leader.r.credential("wx1")
	now := time.Now()
	put := func(rec kv.Credential, rev uint64) uint64 {
		data, _ := kv.EncodeCredential(rec)
		rev, err := casPut(ctx, b, "wx1", data, rev)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	leave := func(rec kv.Credential) {
		a.mu.Lock()
		a.pending = &rec
		a.mu.Unlock()
	}
	stored := func() (uint64, string) {
		e, err := b.Get(ctx, "wx1")
		if err != nil {
			t.Fatal(err)
		}
		rec, err := kv.DecodeCredential("wx1", e.Value())
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision(), rec.Value
	}
	replaced := kv.NewCredential("wx1", "replaced", 2*time.Hour, now.Add(-time.Hour))
	base := put(replaced, 0)
	a.mu.Lock()
	a.rev, a.rec = base, &replaced
	a.mu.Unlock()

	// Another leader stored a newer token, which this replica has not seen.
	leave(kv.NewCredential("wx1", "deposed-leaders", 2*time.Hour, now.Add(-time.Minute)))
	newer := put(kv.NewCredential("wx1", "new-leaders", 2*time.Hour, now), base)
	if leader.r.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev != newer || value != "new-leaders" {
		t.Fatalf("the bucket holds %q at revision %d, want the newer token at %d", value, rev, newer)
	}

	// A leftover fetched after what the bucket holds goes in.
	leave(kv.NewCredential("wx1", "fetched-last", 2*time.Hour, now.Add(time.Second)))
	if leader.r.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev <= newer || value != "fetched-last" {
		t.Fatalf("the bucket holds %q at revision %d, want the leftover after %d", value, rev, newer)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending != nil {
		t.Error("the stored leftover is still pending")
	}
}
