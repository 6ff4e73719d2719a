package publisher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// A token bucket deleted under a running refresher (a `nats kv rm` by
// mistake, a restore gone wrong) must come back by itself: a token fetched
// after the deletion has already started the old token's countdown at
// WeChat, and services would be left holding a dead token. Every replica
// looks at the bucket every bucketCheckEvery. The leader creates a missing
// bucket again, with its revisions continuing after the newest it saw (see
// kv.Recreate), writes back every valid token it holds, stores a token it
// fetched but could not store, and announces them all; a failed write
// that finds the bucket gone does the same at once. Standbys follow the
// new bucket as soon as they see it.

// bucketCheckEvery is how often every replica looks at the token bucket.
const bucketCheckEvery = 5 * time.Second

// bucketMayBeGone reports whether err is what a bucket operation returns
// when the bucket's stream does not exist. A stream between leaders
// answers some of these too, so the stream is looked up before anything
// is created.
func bucketMayBeGone(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound)
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

// checkBucket looks the token bucket up once. A missing bucket is created
// again if this replica leads; a bucket created again since the last look
// is followed anew, and rewatching says so.
func (r *Refresher) checkBucket(ctx context.Context) (rewatching bool) {
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	stream, err := r.js.Stream(ctx, kv.StreamName(r.cfg.Bucket))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if !r.bucketGone.Swap(true) {
			r.log.Error("the token bucket is gone (deleted?); the leader creates it again", "bucket", r.cfg.Bucket)
		}
		if t := r.term.Load(); t != nil {
			r.recreateBucket(t)
		}
		return false
	case err != nil:
		return false // unreachable for now: the next look will tell
	}
	r.bucketGone.Store(false)
	if t := r.term.Load(); t != nil && r.unfinished.Load() != nil {
		r.recreateBucket(t) // created again, but not yet with its revisions going on
	}
	created := stream.CachedInfo().Created.UnixNano()
	if prev := r.bucketCreated.Swap(created); prev != 0 && prev != created {
		r.log.Warn("the token bucket was created again; following it anew", "bucket", r.cfg.Bucket)
		r.rewatchBucket()
		return true
	}
	return false
}

// catchUp makes sure a new leader starts from what the bucket holds: a
// standby's watch may not have noticed yet that the bucket was created
// again, and would leave it with old revisions (and old tokens) in mind.
// A missing bucket is created again at once.
func (r *Refresher) catchUp(ctx context.Context) {
	resynced := r.resynced()
	if !r.checkBucket(ctx) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	select {
	case <-resynced:
	case <-ctx.Done():
	}
}

// resynced returns a channel closed when the bucket's follower next
// delivered every value of a (re)established watch.
func (r *Refresher) resynced() <-chan struct{} {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	return r.syncedCh
}

// followerSynced is the bucket follower's OnSynced.
func (r *Refresher) followerSynced() {
	r.synced.Store(true)
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	close(r.syncedCh)
	r.syncedCh = make(chan struct{})
}

// rewatchBucket has the bucket's follower watch anew.
func (r *Refresher) rewatchBucket() {
	select {
	case r.rewatch <- struct{}{}:
	default:
	}
}

// sawRevision records a revision of the token bucket: the newest ever seen
// is where the revisions of a recreated bucket continue.
func (r *Refresher) sawRevision(rev uint64) {
	for {
		cur := r.lastRev.Load()
		if rev <= cur || r.lastRev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// recreateBucket creates the token bucket again if it is gone, and writes
// back what it held. It returns nil if the bucket exists afterwards.
func (r *Refresher) recreateBucket(t *term) error {
	r.recreating.Lock()
	defer r.recreating.Unlock()
	ctx, cancel := context.WithTimeout(t.work, kvTimeout)
	defer cancel()
	if r.unfinished.Load() == nil {
		// A flight that waited for the lock finds the bucket back.
		_, err := r.js.Stream(ctx, kv.StreamName(r.cfg.Bucket))
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
	}
	last := r.lastRev.Load()
	r.log.Error("the token bucket is gone (deleted?): creating it again", "bucket", r.cfg.Bucket,
		"replicas", r.cfg.Replicas, "history", r.cfg.History, "revisions_after", last)
	_, err := kv.Recreate(ctx, r.js, r.bucketConfig(), last)
	switch {
	case errors.Is(err, kv.ErrRevisionsWentBack):
		// Someone else was quicker and wrote to it: services that hold a
		// newer revision ignore what is stored now until they restart.
		r.log.Error("the token bucket was created again by someone else, with revisions starting over: "+
			"services ignore new tokens until they restart; delete the bucket to let wxtoken create it",
			"bucket", r.cfg.Bucket, "error", err)
	case err != nil:
		// It may exist now, with revisions starting over: it is not done
		// until they go on, which the next look tries again.
		if advice := needsHuman(r.nc, err); advice != nil {
			err = advice // a permission refused, most likely to purge (see nats.conf)
		}
		r.log.Error("the token bucket could not be created again; retrying", "bucket", r.cfg.Bucket, "error", err)
		err = fmt.Errorf("publisher: the token bucket %s could not be created again: %w", r.cfg.Bucket, err)
		r.unfinished.Store(&err)
		return err
	}
	r.unfinished.Store(nil)
	r.bucketGone.Store(false)
	r.metrics.recreated.Inc()
	if stream, err := r.js.Stream(ctx, kv.StreamName(r.cfg.Bucket)); err == nil {
		r.bucketCreated.Store(stream.CachedInfo().Created.UnixNano())
	}
	r.rewatchBucket()
	restored := r.restore(ctx, t)
	r.log.Error("the token bucket is back: valid tokens written again and announced", "bucket", r.cfg.Bucket,
		"restored", restored)
	return nil
}

// restore writes every valid token this replica holds into the recreated
// bucket and announces it, and lets a token fetched but not stored be
// stored at once. Apps with a rotation under way store their own.
func (r *Refresher) restore(ctx context.Context, t *term) (restored int) {
	now := r.cfg.Clock.now()
	for _, a := range r.appList() {
		a.mu.Lock()
		rec := a.validRecord(now)
		busy, pending := a.flight != nil, a.pending != nil
		if pending && !busy {
			a.retryAt = time.Time{} // its write failed for the bucket's sake, not WeChat's
		}
		a.mu.Unlock()
		if busy {
			continue
		}
		if rec != nil && !pending {
			data, err := kv.Encode(*rec)
			if err != nil {
				continue
			}
			rev, err := t.bucket.Create(ctx, a.id, data)
			if err != nil {
				r.log.Warn("token not written back", "appid", a.id, "error", err)
				continue
			}
			r.sawRevision(rev)
			a.mu.Lock()
			if rev > a.rev {
				r.setRecord(a, rev, rec)
			}
			a.mu.Unlock()
			r.announceStored(a)
			restored++
		}
		r.plan(t, a)
	}
	return restored
}
