package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
)

// Who may campaign. Each replica publishes what it could lead (a
// kv.ReplicaState: how many apps its probes proved it cannot use from
// where it stands) under its key in the replicas bucket, every third of a
// lease TTL; the bucket's MaxAge is the lease TTL, so a replica's key
// lapses as a leader's lease does, a TTL after its last write. The rule:
//
//	A replica defers while another replica is alive (its key was written
//	within a lease TTL), has read the token bucket and campaigns or leads
//	(Standing), has a verdict on every app it probes (Complete), and has
//	fewer apps it cannot lead (a lower CannotLead). Deferring, it does
//	not campaign; leading, it releases the lease, as a clean stop does.
//
// A replica whose first round of probes is under way counts only the
// apps judged so far, too few: deferring to it would hand the lease to a
// replica that may be the worst of all, and take it back a round later.
// Its own count only grows, so it may itself defer to a complete one
// with fewer. A lower CannotLead is a strict order, so the complete
// replicas with the lowest never defer, and incomplete ones are deferred
// to by nobody: among live replicas someone always campaigns, and a lone
// replica leads whatever it cannot do. A deferring replica campaigns again
// as soon as no better replica is alive: the better one stopped cleanly
// (its key is deleted), or died (its key is not renewed). A replica judges
// another's life by when it itself last saw that one's state, on its own
// clock, never by another machine's: a TTL after the last write it saw,
// looked at every third of a TTL; a state read at start may already be a
// TTL old, so a dead replica is deferred to for at most two TTLs. The rule
// only says whether a replica tries; taking the lease is Acquire's
// compare-and-swap as before, so one writer and the fence are untouched.
//
// The states are in a bucket of their own and not in the lease bucket: a
// lease bucket created again is left alone for a TTL only while nothing
// was ever written to it (ensureBucket), and the replicas' writes would
// end that at once.

// PeersConfig is how a replica publishes its state and reads the others'.
type PeersConfig struct {
	TokenBucket string        // the bucket is kv.ReplicasBucket(TokenBucket)
	TTL         time.Duration // the lease TTL: the MaxAge of a bucket this creates
	Replicas    int           // of the bucket, for a bucket this creates
	Instance    string
	Logger      *slog.Logger
	// State is this replica's state now; it is written every TTL/3, and
	// at once when Changed receives.
	State   func() kv.ReplicaState
	Changed <-chan struct{}
}

// Peers is this replica's view of the replicas, itself included.
type Peers struct {
	cfg    PeersConfig
	js     jetstream.JetStream
	nc     *nats.Conn
	name   string
	bucket jetstream.KeyValue
	key    string
	ttl    time.Duration // the bucket's MaxAge

	mu      sync.Mutex
	seen    map[string]peer // by key
	updated chan struct{}   // closed, and replaced, when the view may have changed
	synced  chan struct{}   // closed at the watch's first sync
	once    sync.Once
}

// peer is another replica's last state, and when this replica saw it.
type peer struct {
	state kv.ReplicaState
	seen  time.Time
}

// OpenPeers binds the replicas bucket, or creates it with MaxAge cfg.TTL.
func OpenPeers(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg PeersConfig) (*Peers, error) {
	name := kv.ReplicasBucket(cfg.TokenBucket)
	b, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		b, err = createTTLBucket(ctx, js, name, peersDescription, cfg.TTL, cfg.Replicas)
	}
	if err != nil {
		return nil, fmt.Errorf("publisher: open replicas bucket %s: %w", name, err)
	}
	st, err := b.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("publisher: replicas bucket %s: %w", name, err)
	}
	ttl := st.TTL()
	if ttl <= 0 {
		return nil, fmt.Errorf("publisher: replicas bucket %s has no TTL, so a dead replica would be deferred to for ever; delete it and restart", name)
	}
	return &Peers{cfg: cfg, js: js, nc: nc, name: name, bucket: b, key: kv.ReplicaKey(cfg.Instance), ttl: ttl,
		seen: map[string]peer{}, updated: make(chan struct{}), synced: make(chan struct{})}, nil
}

// Run publishes this replica's state and follows the others' until ctx
// ends, then deletes its key, so that no one defers to a replica gone.
func (p *Peers) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	rewatch := make(chan struct{}, 1)
	wg.Go(func() {
		(&kvwatch.Follower{Bucket: p.bucket, Key: ">", Conn: p.nc, OnEntry: p.observe, Rewatch: rewatch,
			OnSynced: func() { p.once.Do(func() { close(p.synced) }) },
			OnError:  func(err error) { p.cfg.Logger.Debug("replicas bucket watch interrupted, resuming", "error", err) }}).Run(ctx)
	})
	every := p.ttl / 3
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if p.publish(ctx) {
			select {
			case rewatch <- struct{}{}:
			default:
			}
		}
		p.touch() // a replica may have gone stale since the last look
		select {
		case <-ctx.Done():
			p.leave()
			return
		case <-tick.C:
		case <-p.cfg.Changed:
		}
	}
}

// publish writes this replica's state, and reports whether it created the
// bucket again to do so (so that the watch starts over on the new one).
func (p *Peers) publish(ctx context.Context) (created bool) {
	ctx, cancel := context.WithTimeout(ctx, p.ttl/3)
	defer cancel()
	state := p.cfg.State()
	state.Instance, state.At = p.cfg.Instance, time.Now()
	_, err := p.bucket.Put(ctx, p.key, kv.EncodeReplicaState(state))
	if err != nil && bucket.MayBeGone(err) {
		if _, cerr := createTTLBucket(ctx, p.js, p.name, peersDescription, p.ttl, p.cfg.Replicas); cerr == nil {
			_, err = p.bucket.Put(ctx, p.key, kv.EncodeReplicaState(state))
			created = err == nil
		}
	}
	if err != nil && ctx.Err() == nil {
		p.cfg.Logger.Warn("cannot publish this replica's state in the replicas bucket; retrying", "bucket", p.name, "error", err)
	}
	return created
}

// leave deletes this replica's key.
func (p *Peers) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
	defer cancel()
	p.bucket.Delete(ctx, p.key)
}

// observe takes in an entry of the bucket.
func (p *Peers) observe(e jetstream.KeyValueEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(p.seen, e.Key())
	} else if s, err := kv.DecodeReplicaState(e.Value()); err == nil {
		p.seen[e.Key()] = peer{state: s, seen: time.Now()}
	}
	p.wake()
}

// touch wakes those waiting on Updated, to look again.
func (p *Peers) touch() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wake()
}

func (p *Peers) wake() {
	close(p.updated)
	p.updated = make(chan struct{})
}

// Updated is closed when the view may have changed: a replica's state
// came or went, or a third of a TTL passed (a replica may have gone
// stale). Call Better again then.
func (p *Peers) Updated() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.updated
}

// Better returns the best live, standing, complete replica with fewer
// apps it cannot lead than this one (the rule above); ok false when there
// is none, and this replica may campaign.
func (p *Peers) Better() (best kv.ReplicaState, ok bool) {
	own := p.cfg.State().CannotLead
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, o := range p.seen {
		s := o.state
		switch {
		case key == p.key, time.Since(o.seen) >= p.ttl, !s.Standing, !s.Complete(), s.CannotLead >= own:
			continue
		case !ok, s.CannotLead < best.CannotLead, s.CannotLead == best.CannotLead && s.Instance < best.Instance:
			best, ok = s, true
		}
	}
	return best, ok
}

// Synced is closed once the replicas' states present when Run started
// have been read: before that, Better knows of no one.
func (p *Peers) Synced() <-chan struct{} { return p.synced }

// TTL is the lease's TTL, the bucket's (see Open).
func (l *Lease) TTL() time.Duration { return l.ttl }
