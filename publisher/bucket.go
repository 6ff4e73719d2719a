package publisher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// A token bucket deleted under a running refresher (a `nats kv rm` by
// mistake, a restore gone wrong) must come back by itself: a token fetched
// after the deletion has already started the old token's countdown at
// WeChat, and services would be left holding a dead token. So must a
// bucket created again with revisions that start over (by a replica that
// started meanwhile, or an operator): services ignore a revision no newer
// than the one they hold, and would ignore every new token.
//
// Every replica looks at the bucket every bucketCheckEvery, and a write
// that finds the bucket gone, or lands at a revision that went back, looks
// at once. The leader repairs what it finds: it creates the bucket again
// if it is gone and moves its revisions past the newest it saw
// (kv.Recreate), then writes back every valid token it holds and
// announces it. Standbys follow a bucket created again as soon as they see
// it, and a new leader looks before it acts.

// bucketCheckEvery is how often every replica looks at the token bucket.
const bucketCheckEvery = 5 * time.Second

// bucketLife is what a refresher knows of the token bucket's life.
type bucketLife struct {
	lastRev atomic.Uint64         // the newest revision seen
	problem atomic.Pointer[error] // what the last look found wrong, for Ready
	created atomic.Int64          // when the bucket followed was created, Unix nanoseconds

	// rewatch has the bucket's follower watch anew; resyncing is set until
	// that watch has delivered what the bucket holds.
	rewatch   chan struct{}
	resyncing atomic.Bool
	syncMu    sync.Mutex
	synced    chan struct{} // closed and replaced each time the follower synced

	// writes is held for reading by every write of a token, and for
	// writing by a repair: what a repair carries over must not move under it.
	writes sync.RWMutex
}

func newBucketLife() bucketLife {
	return bucketLife{rewatch: make(chan struct{}, 1), synced: make(chan struct{})}
}

// saw records a revision of the token bucket.
func (b *bucketLife) saw(rev uint64) {
	for {
		cur := b.lastRev.Load()
		if rev <= cur || b.lastRev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

func (b *bucketLife) setProblem(err error) {
	if err == nil {
		b.problem.Store(nil)
		return
	}
	b.problem.Store(&err)
}

// followAnew has the follower watch the bucket anew.
func (b *bucketLife) followAnew() {
	b.resyncing.Store(true)
	select {
	case b.rewatch <- struct{}{}:
	default:
	}
}

// nextSync returns a channel closed when the follower next synced.
func (b *bucketLife) nextSync() <-chan struct{} {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	return b.synced
}

// followerSynced is the bucket follower's OnSynced.
func (b *bucketLife) followerSynced() {
	b.resyncing.Store(false)
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	close(b.synced)
	b.synced = make(chan struct{})
}

// watchBucket looks at the token bucket until ctx ends.
func (r *Refresher) watchBucket(ctx context.Context) {
	t := time.NewTicker(bucketCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.checkBucket(ctx)
	}
}

// checkBucket looks at the token bucket once and, on the leader, repairs
// what it finds wrong.
func (r *Refresher) checkBucket(ctx context.Context) {
	problem, looked := r.inspect(ctx)
	switch {
	case !looked:
		return // unreachable for now: the next look will tell
	case problem == nil:
		r.life.setProblem(nil)
	case r.term.Load() != nil:
		r.repair(r.term.Load(), problem)
	case problem != nil:
		r.life.setProblem(fmt.Errorf("%w; the leader repairs it", problem))
	}
}

// inspect looks at the token bucket and says what is wrong with it: gone,
// or behind the revisions services may hold. looked is false when the
// bucket could not be looked at. A bucket created again since the last
// look is followed anew.
func (r *Refresher) inspect(ctx context.Context) (problem error, looked bool) {
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	// Counted before the look: a write meanwhile is in what it sees.
	last, valid := r.life.lastRev.Load(), r.validTokens()
	stream, err := r.js.Stream(ctx, bucket.StreamName(r.cfg.Bucket))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("publisher: the token bucket %s is gone (deleted?)", r.cfg.Bucket), true
	case err != nil:
		return nil, false
	}
	info := stream.CachedInfo()
	if created, prev := info.Created.UnixNano(), r.life.created.Swap(info.Created.UnixNano()); prev != 0 && prev != created {
		r.log.Warn("the token bucket was created again; following it anew", "bucket", r.cfg.Bucket)
		r.life.followAnew()
	}
	if bucket.Behind(info, last) {
		return fmt.Errorf("publisher: the token bucket %s was created again by someone else, its revisions starting over "+
			"(at %d; services may hold %d)", r.cfg.Bucket, info.State.LastSeq, last), true
	}
	// Every key holds a message at least: fewer messages than valid
	// tokens this replica knows of means keys are missing (a repair cut
	// short, a purge).
	if info.State.Msgs < uint64(valid) {
		return fmt.Errorf("publisher: the token bucket %s holds %d values, fewer than the %d valid tokens known",
			r.cfg.Bucket, info.State.Msgs, valid), true
	}
	return nil, true
}

// validTokens counts the apps whose token in the bucket, as this replica
// knows it, is valid.
func (r *Refresher) validTokens() (n int) {
	now := r.cfg.Clock.now()
	for _, a := range r.credentialList() {
		a.mu.Lock()
		if a.validRecord(now) != nil {
			n++
		}
		a.mu.Unlock()
	}
	return n
}

// catchUp makes sure a new leader starts from what the bucket holds: a
// standby's watch may not have noticed yet that the bucket was created
// again, and would leave it with old revisions (and old tokens) in mind.
// A bucket in need of repair is repaired at once.
func (r *Refresher) catchUp(ctx context.Context) {
	synced := r.life.nextSync()
	r.checkBucket(ctx)
	if !r.life.resyncing.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	select {
	case <-synced:
	case <-ctx.Done():
	}
}

// repair makes the token bucket fit to write to again, on the leader:
// created if it is gone, its revisions past the newest seen, every valid
// token written back and announced. why is what was found wrong. It
// returns nil once the bucket is fit.
func (r *Refresher) repair(t *term, why error) error {
	r.life.writes.Lock()
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	// Writes that found the bucket broken together repair it once.
	if problem, looked := r.inspect(ctx); looked && problem == nil {
		r.life.writes.Unlock()
		return nil
	}
	last := r.life.lastRev.Load()
	r.log.Error("repairing the token bucket", "bucket", r.cfg.Bucket, "why", why.Error(),
		"replicas", r.cfg.Replicas, "history", r.cfg.History, "revisions_after", last)
	since := r.nc.LastError()
	_, moved, err := bucket.Recreate(ctx, r.js, r.bucketConfig(), last)
	if err == nil {
		var stream jetstream.Stream
		if stream, err = r.js.Stream(ctx, bucket.StreamName(r.cfg.Bucket)); err == nil {
			r.life.created.Store(stream.CachedInfo().Created.UnixNano())
		}
	}
	r.life.writes.Unlock()
	if err != nil {
		if t.work.Err() != nil {
			return errEnding // no longer leading: the next leader looks for itself
		}
		if advice := needsHuman(r.nc, since, err); advice != nil {
			err = advice // a permission refused, most likely to purge (see nats.conf)
		}
		err = fmt.Errorf("publisher: the token bucket %s could not be repaired, retrying: %w", r.cfg.Bucket, err)
		r.log.Error("the token bucket could not be repaired; retrying", "bucket", r.cfg.Bucket, "error", err)
		r.life.setProblem(err)
		return err
	}
	r.life.setProblem(nil)
	r.metrics.repaired.Inc()
	if moved {
		r.life.followAnew()
	}
	// Keys the bucket holds are left as they are; missing ones, and older
	// tokens, are written. What fails is stored by its app's rotation.
	restored, failed := r.restore(t)
	r.log.Error("the token bucket is repaired: valid tokens written back and announced", "bucket", r.cfg.Bucket,
		"revisions_moved", moved, "restored", restored, "to_retry", failed)
	return nil
}

// restoreConcurrency bounds the writes a restore runs at once.
const restoreConcurrency = 32

// restore writes every valid token this replica holds into the repaired
// bucket and announces it. A token fetched but not stored is stored by its
// app's rotation, at once. Apps with a rotation under way store their own.
// A write that fails leaves its token to be stored like one fetched but
// not stored.
func (r *Refresher) restore(t *term) (restored, failed int) {
	now := r.cfg.Clock.now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, restoreConcurrency)
	for _, a := range r.credentialList() {
		a.mu.Lock()
		rec := a.validRecord(now)
		busy, pending := a.flight != nil, a.pending != nil
		if !busy && pending {
			a.retryAt = time.Time{} // its write failed for the bucket's sake, not WeChat's
		}
		a.mu.Unlock()
		if busy || pending || rec == nil {
			r.plan(t, a)
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			wrote, err := r.writeBack(t, a, *rec)
			mu.Lock()
			switch {
			case err != nil:
				failed++
			case wrote:
				restored++
			}
			mu.Unlock()
			r.plan(t, a)
		})
	}
	wg.Wait()
	return restored, failed
}

// writeBack stores rec, a's valid token, if the bucket does not hold it,
// and announces it; it reports whether it wrote it, and false with an
// error when it could not (the token is then stored by the app's
// rotation, like one fetched but not stored).
func (r *Refresher) writeBack(t *term, a *credential, rec kv.Credential) (bool, error) {
	data, err := kv.EncodeCredential(rec)
	if err != nil {
		return false, err
	}
	rev, stored, _, err := r.store(t.work, t.bucket, a.key, rec, data, 0)
	if err != nil {
		a.mu.Lock()
		if a.pending == nil {
			a.pending = &rec
		}
		a.mu.Unlock()
		r.log.Warn("token not written back; retrying", "appid", a.key, "error", err)
		return false, err
	}
	r.life.saw(rev)
	a.mu.Lock()
	wrote := rev > a.rev
	if wrote {
		r.setRecord(a, rev, &stored)
	}
	a.mu.Unlock()
	r.announceStored(a)
	return wrote, nil
}
