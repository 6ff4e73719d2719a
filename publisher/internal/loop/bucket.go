package loop

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
	lastRev atomic.Uint64 // the newest revision seen
	// valued is set once a credential's key was seen: a token or a ticket
	// was stored. A ledger's key is not one: every replica's probes count
	// their calls there at start, before any replica led.
	valued  atomic.Bool
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

// WatchBucket looks at the token bucket until ctx ends, on every replica,
// and on the leader repairs what it finds wrong.
func (c *Credentials) WatchBucket(ctx context.Context) {
	t := time.NewTicker(bucketCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.checkBucket(ctx)
	}
}

// checkBucket looks at the token bucket once and, on the leader, repairs
// what it finds wrong.
func (c *Credentials) checkBucket(ctx context.Context) {
	problem, looked := c.inspect(ctx)
	switch {
	case !looked:
		return // unreachable for now: the next look will tell
	case problem == nil:
		c.life.setProblem(nil)
	case c.term.Load() != nil:
		c.repair(c.term.Load(), problem)
	case problem != nil:
		c.life.setProblem(fmt.Errorf("%w; the leader repairs it", problem))
	}
}

// inspect looks at the token bucket and says what is wrong with it: gone,
// or behind the revisions services may hold. looked is false when the
// bucket could not be looked at. A bucket created again since the last
// look is followed anew.
func (c *Credentials) inspect(ctx context.Context) (problem error, looked bool) {
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	// Counted before the look: a write meanwhile is in what it sees.
	last, valid := c.life.lastRev.Load(), c.validTokens()
	stream, err := c.cfg.JS.Stream(ctx, bucket.StreamName(c.cfg.Bucket.Name))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("publisher: the token bucket %s is gone (deleted?)", c.cfg.Bucket.Name), true
	case err != nil:
		return nil, false
	}
	info := stream.CachedInfo()
	if created, prev := info.Created.UnixNano(), c.life.created.Swap(info.Created.UnixNano()); prev != 0 && prev != created {
		c.log.Warn("the token bucket was created again; following it anew", "bucket", c.cfg.Bucket.Name)
		c.life.followAnew()
	}
	if bucket.Behind(info, last) {
		return fmt.Errorf("publisher: the token bucket %s was created again by someone else, its revisions starting over "+
			"(at %d; services may hold %d)", c.cfg.Bucket.Name, info.State.LastSeq, last), true
	}
	// Every key holds a message at least: fewer messages than valid
	// tokens this replica knows of means keys are missing (a repair cut
	// short, a purge).
	if info.State.Msgs < uint64(valid) {
		return fmt.Errorf("publisher: the token bucket %s holds %d values, fewer than the %d valid tokens known",
			c.cfg.Bucket.Name, info.State.Msgs, valid), true
	}
	return nil, true
}

// validTokens counts the apps whose token in the bucket, as this replica
// knows it, is valid.
func (c *Credentials) validTokens() (n int) {
	now := c.now()
	for _, cr := range c.list() {
		if cr.valid(now) != nil {
			n++
		}
	}
	return n
}

// catchUp makes sure a new leader starts from what the bucket holds: a
// standby's watch may not have noticed yet that the bucket was created
// again, and would leave it with old revisions (and old tokens) in mind.
// A bucket in need of repair is repaired at once.
func (c *Credentials) catchUp(ctx context.Context) {
	synced := c.life.nextSync()
	c.checkBucket(ctx)
	if !c.life.resyncing.Load() {
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
func (c *Credentials) repair(t *term, why error) error {
	c.life.writes.Lock()
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	// Writes that found the bucket broken together repair it once.
	if problem, looked := c.inspect(ctx); looked && problem == nil {
		c.life.writes.Unlock()
		return nil
	}
	last := c.life.lastRev.Load()
	c.log.Error("repairing the token bucket", "bucket", c.cfg.Bucket.Name, "why", why.Error(),
		"replicas", c.cfg.Bucket.Replicas, "history", c.cfg.Bucket.History, "revisions_after", last)
	since := c.cfg.Conn.LastError()
	_, moved, err := bucket.Recreate(ctx, c.cfg.JS, c.cfg.Bucket, last)
	if err == nil {
		var stream jetstream.Stream
		if stream, err = c.cfg.JS.Stream(ctx, bucket.StreamName(c.cfg.Bucket.Name)); err == nil {
			c.life.created.Store(stream.CachedInfo().Created.UnixNano())
		}
	}
	c.life.writes.Unlock()
	if err != nil {
		if t.work.Err() != nil {
			return ErrEnding // no longer leading: the next leader looks for itself
		}
		if advice := bucket.NeedsHuman(c.cfg.Conn, since, err); advice != nil {
			err = advice // a permission refused, most likely to purge (see nats.conf)
		}
		err = fmt.Errorf("publisher: the token bucket %s could not be repaired, retrying: %w", c.cfg.Bucket.Name, err)
		c.log.Error("the token bucket could not be repaired; retrying", "bucket", c.cfg.Bucket.Name, "error", err)
		c.life.setProblem(err)
		return err
	}
	c.life.setProblem(nil)
	c.metrics.Repaired()
	if moved {
		c.life.followAnew()
	}
	// Keys the bucket holds are left as they are; missing ones, and older
	// tokens, are written. What fails is stored by its app's rotation.
	restored, failed := c.restore(t)
	c.log.Error("the token bucket is repaired: valid tokens written back and announced", "bucket", c.cfg.Bucket.Name,
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
func (c *Credentials) restore(t *term) (restored, failed int) {
	now := c.now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, restoreConcurrency)
	for _, cr := range c.list() {
		rec, busy, pending := cr.restoring(now)
		if busy || pending || rec == nil {
			c.plan(t, cr)
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			wrote, err := c.writeBack(t, cr, *rec)
			mu.Lock()
			switch {
			case err != nil:
				failed++
			case wrote:
				restored++
			}
			mu.Unlock()
			c.plan(t, cr)
		})
	}
	wg.Wait()
	return restored, failed
}

// writeBack stores rec, cr's valid value, if the bucket does not hold it,
// and announces it; it reports whether it wrote it, and false with an
// error when it could not (the value is then stored by the credential's
// rotation, like one fetched but not stored).
func (c *Credentials) writeBack(t *term, cr *credential, rec kv.Credential) (bool, error) {
	data, err := kv.EncodeCredential(rec)
	if err != nil {
		return false, err
	}
	rev, stored, _, err := c.store(t.work, t.bucket, cr.key, rec, data, 0)
	if err != nil {
		cr.keep(rec, true)
		c.log.Warn("token not written back; retrying", "appid", cr.key, "error", err)
		return false, err
	}
	c.life.saw(rev)
	wrote := cr.wrote(rev, stored, c.windowOf(cr.id().src))
	c.announceStored(cr)
	return wrote, nil
}

// Observe takes in an entry of the token bucket, on every replica, as its
// follower delivers it: the loop's own writes coming back, and anything
// anyone else wrote.
func (c *Credentials) Observe(e jetstream.KeyValueEntry) {
	defer func() {
		if p := recover(); p != nil {
			c.logPanic(p)
		}
	}()
	c.life.saw(e.Revision())
	if !c.life.valued.Load() && kv.ValidateKey(e.Key()) == nil {
		c.life.valued.Store(true)
	}
	cr := c.credential(e.Key())
	if cr == nil {
		return // another deployment's key, or one this version does not know
	}
	var rec *kv.Credential
	if e.Operation() == jetstream.KeyValuePut {
		decoded, err := kv.DecodeCredential(cr.key, e.Value())
		if err != nil {
			c.log.Warn("token bucket holds an undecodable value; replacing it", "appid", cr.key, "revision", e.Revision(), "error", err)
		} else {
			rec = &decoded
		}
	}
	t := c.term.Load()
	took, older, putBack := cr.observed(e.Revision(), rec, t != nil, c.now(), c.windowOf(cr.id().src))
	if !took {
		return
	}
	if putBack {
		// An older value over a newer one that is still valid (a backup
		// restored, a repair carrying old values over): the newer one
		// goes back in, and the older one is not announced.
		c.log.Warn("the token bucket holds an older token than the one known; writing the newer back",
			"appid", cr.key, "revision", e.Revision())
	}
	if t != nil {
		if !older {
			c.announceStored(cr)
		}
		c.plan(t, cr)
		if rec != nil {
			c.wakeChildren(t, cr)
		}
	}
}

// Open creates or opens the token bucket as configured, and returns it,
// once the calls made before it was open are counted in their ledgers.
func (c *Credentials) Open(ctx context.Context) (jetstream.KeyValue, error) {
	b, err := bucket.Open(ctx, c.cfg.JS, c.cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	if st, err := b.Status(ctx); err == nil {
		if kvs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
			c.life.created.Store(kvs.StreamInfo().Created.UnixNano())
		}
	}
	c.bucket.Store(&b)
	c.countKept(ctx, b)
	return b, nil
}

// Read takes in the bucket's values of keys, as its follower would,
// within one bucket.Timeout for them all: for credentials just added,
// whose keys the follower dropped while it did not know them. It reads
// nothing before the follower has read the bucket: the follower delivers
// them.
func (c *Credentials) Read(keys []string) {
	b := c.bucket.Load()
	if b == nil || !c.Synced() || len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
	defer cancel()
	for _, key := range keys {
		e, err := (*b).Get(ctx, key)
		switch {
		case err == nil:
			c.Observe(e)
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case ctx.Err() != nil:
			c.log.Warn("cannot read the tokens of apps just added; their rotations will", "error", err)
			return
		}
	}
}

// FollowerSynced is the token bucket follower's OnSynced: the bucket has
// been read.
func (c *Credentials) FollowerSynced() {
	c.synced.Store(true)
	c.life.followerSynced()
}

// Synced reports whether the token bucket has been read.
func (c *Credentials) Synced() bool { return c.synced.Load() }

// NextSync returns a channel closed when the follower next synced.
func (c *Credentials) NextSync() <-chan struct{} { return c.life.nextSync() }

// Rewatch receives when the follower must watch the bucket anew (it was
// created again).
func (c *Credentials) Rewatch() <-chan struct{} { return c.life.rewatch }

// Problem is what the last look at the token bucket found wrong, or nil.
func (c *Credentials) Problem() error {
	if err := c.life.problem.Load(); err != nil {
		return *err
	}
	return nil
}

// HasTokens reports whether the bucket ever held a token or a ticket this
// replica saw (a ledger does not count: the probes write one before any
// replica leads, and a fresh deployment would then wait a lease TTL).
func (c *Credentials) HasTokens() bool { return c.life.valued.Load() }
