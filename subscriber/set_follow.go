package subscriber

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/internal/swapprobe"
	"github.com/wxtoken/wxtoken/kv"
)

// How a Set follows its keys: one core subscription to every Value
// subject, and one read of the bucket at start; after a reconnect (or
// values dropped by a slow process) a read of what was stored since the
// last read; a sweep that reads the keys whose value nears expiry with
// nothing newer in sight. Without published values (an older refresher,
// a server without bucket metadata, or a user that may not subscribe to
// them), one KV watch of the keys instead.

// run binds the bucket, retrying until it exists, then follows the keys.
func (s *Set) run(ctx context.Context, js jetstream.JetStream) {
	bucket, published, ok := bind(ctx, js, s.opts.bucket, s.subjects, func(err error) { s.report("", err) })
	if !ok {
		return
	}
	s.bucket.Store(&bucket)
	if published && s.followValues(ctx, bucket) {
		return
	}
	s.opts.logger.Info("following the keys with a KV watch", "bucket", bucket.Bucket())
	s.watch(ctx, bucket)
}

// followValues follows the keys on one subscription to the Value subjects.
// It returns false at once if the server refuses the subscription.
func (s *Set) followValues(ctx context.Context, bucket jetstream.KeyValue) bool {
	subject := s.subjects.Value(">")
	var sub *nats.Subscription
	var ended chan struct{} // closed when nats.go has stopped calling take
	for {
		var err error
		ended = make(chan struct{})
		// A callback subscription: nats.go's reader queues each value
		// (up to 512k of them, far more than a refresher republishing a
		// whole bucket at the start of its term sends at once), and one
		// goroutine of nats.go's takes each in: one hand-off from the
		// socket to Token(key), as a Subscriber has.
		if sub, err = s.nc.Subscribe(subject, s.take); err == nil {
			closed := ended
			sub.SetClosedHandler(func(string) { close(closed) })
			if limit := s.opts.pendingLimit; limit > 0 {
				sub.SetPendingLimits(limit, -1)
			}
			fctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
			err = s.nc.FlushWithContext(fctx) // a refused subscription is reported before the flush's answer
			cancel()
		}
		if err == nil {
			break
		}
		if sub != nil {
			s.unsubscribe(sub, ended)
		}
		if ctx.Err() != nil {
			return true
		}
		s.report("", err)
		select {
		case <-ctx.Done():
			return true
		case <-time.After(time.Second):
		}
	}
	defer s.unsubscribe(sub, ended)
	if err := s.nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
		s.opts.logger.Warn("may not subscribe to the published tokens: grant subscribe on them (see nats.conf)", "subject", subject)
		return false
	}
	reconnected := s.nc.StatusChanged(nats.CONNECTED)
	defer s.nc.RemoveStatusListener(reconnected)

	// The subscription is on the server before the read starts: no value
	// falls between the two.
	s.catchUp(ctx, bucket)
	sweep := time.NewTimer(s.untilSweep())
	defer sweep.Stop()
	lookForDrops := time.NewTicker(dropCheck)
	defer lookForDrops.Stop()
	dropped := 0
	for {
		select {
		case <-ctx.Done():
			return true
		case <-reconnected:
			s.catchUp(ctx, bucket)
		case <-lookForDrops.C:
			// Values nats.go dropped (this process fell half a million
			// behind) are read as a reconnect's are.
			if n, err := sub.Dropped(); err == nil && n > dropped {
				s.opts.logger.Warn("values were dropped while this process was too busy to take them in; reading what was missed",
					"dropped", n-dropped)
				dropped = n
				s.catchUp(ctx, bucket)
			}
		case <-s.sooner:
			sweep.Reset(s.untilSweep())
		case <-sweep.C:
			s.sweep(ctx, bucket)
			sweep.Reset(s.untilSweep())
		}
	}
}

// dropCheck is how often the subscription is asked whether nats.go dropped
// values.
const dropCheck = time.Second

// unsubscribe ends sub, and waits until nats.go has stopped delivering its
// messages (ended is closed): nothing the Set started outlives Close. On a
// closed connection nats.go's goroutine has ended, or ends at once, and
// may have done so before it had a closed handler to call.
func (s *Set) unsubscribe(sub *nats.Subscription, ended <-chan struct{}) {
	sub.Unsubscribe()
	if !s.nc.IsClosed() {
		<-ended
	}
}

// take takes in one message of the Value subjects.
func (s *Set) take(m *nats.Msg) {
	key, ok := strings.CutPrefix(m.Subject, s.values)
	if !ok || !s.follows(key) {
		return
	}
	rev, record, err := kv.DecodeValueMsg(m)
	if err != nil {
		s.report(key, err)
		return
	}
	if reason := kv.RemovalReason(m.Header); reason != "" {
		s.remove(key, rev, reason)
		return
	}
	s.apply(key, rev, kv.ValueOperation(m.Header), record)
}

// follows reports whether key is one the Set follows: one of WithKeys, or
// any credential's key (a stable app's force budget is none).
func (s *Set) follows(key string) bool {
	if s.named != nil {
		return s.named[key]
	}
	return s.keys.get(key) != nil || kv.ValidateKey(key) == nil
}

// catchUp reads the bucket until it succeeds or ctx ends: the last value
// of each key the first time, and after that every value stored since the
// last read, which holds at most one per key the bucket changed (or its
// history's worth), not the whole bucket. Either way, every value stored
// up to the read's end is then held: the reads start after the
// subscription, and the values stored after a read came on it, or come
// with the next read after a reconnect.
func (s *Set) catchUp(ctx context.Context, bucket jetstream.KeyValue) {
	delay := 50 * time.Millisecond
	for {
		s.applying.Lock()
		from := s.synced
		s.applying.Unlock()
		if from > 0 {
			from++
		}
		err := s.read(ctx, bucket, from)
		if err == nil || ctx.Err() != nil {
			return
		}
		s.report("", fmt.Errorf("subscriber: reading bucket %s: %w", bucket.Bucket(), err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// read reads the keys followed from the bucket, with one consumer that
// ends with the read: the last value of each key (from 0), or every value
// stored from revision from on. It returns once it has taken in what the
// bucket held when the read started.
func (s *Set) read(ctx context.Context, bucket jetstream.KeyValue, from uint64) error {
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var opts []jetstream.WatchOpt
	if from > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(from))
	}
	var w jetstream.KeyWatcher
	var err error
	if s.named != nil {
		w, err = bucket.WatchFiltered(wctx, s.namedKeys(), opts...)
	} else {
		w, err = bucket.WatchAll(wctx, opts...)
	}
	if err != nil {
		return err
	}
	// The consumer ends with wctx: nats.go then unsubscribes and deletes
	// it, on a goroutine of its own, with a JetStream request. That request
	// waits out its 5 s timeout when the connection dropped meanwhile, and
	// neither the loop nor Close waits for it (the server drops an inactive
	// consumer anyway).
	// A read of 10,000 keys takes a fraction of a second; one that stops
	// delivering has lost its server.
	idle := time.NewTimer(s.opts.requestTimeout)
	defer idle.Stop()
	var last uint64
	var deleted []string
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-idle.C:
			return fmt.Errorf("nothing came for %s", s.opts.requestTimeout)
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return kvwatch.ErrWatchClosed
			case e == nil: // caught up
				for _, key := range deleted {
					s.lookForRemoval(ctx, bucket, key)
				}
				s.caughtUp(last)
				return nil
			}
			idle.Reset(s.opts.requestTimeout)
			last = max(last, e.Revision())
			if e.Operation() != jetstream.KeyValuePut && s.follows(e.Key()) {
				deleted = append(deleted, e.Key()) // removed for good, or by someone: its marker says
			}
			s.apply(e.Key(), e.Revision(), e.Operation(), e.Value())
		}
	}
}

// namedKeys returns a copy of WithKeys' keys (nats.go writes over the
// slice it is given).
func (s *Set) namedKeys() []string { return slices.Clone(s.opts.keys) }

// caughtUp records a complete read that reached revision last (0: it
// delivered nothing, and the next read starts where the last did).
func (s *Set) caughtUp(last uint64) {
	s.applying.Lock()
	s.synced = max(s.synced, last)
	s.applying.Unlock()
	s.overcome("")
	s.readOnce.Do(func() { close(s.ready) })
}

// watch follows the keys with a KV watch, re-established when NATS drops
// it: for a bucket whose values are not published, or a user that may not
// subscribe to them.
func (s *Set) watch(ctx context.Context, bucket jetstream.KeyValue) {
	f := &kvwatch.Follower{
		Bucket: bucket,
		Key:    ">",
		Conn:   s.nc,
		OnEntry: func(e jetstream.KeyValueEntry) {
			if e.Operation() != jetstream.KeyValuePut && s.follows(e.Key()) {
				s.lookForRemoval(ctx, bucket, e.Key()) // or someone's delete, which the refresher writes over
			}
			s.apply(e.Key(), e.Revision(), e.Operation(), e.Value())
		},
		OnSynced: func() {
			s.overcome("")
			s.readOnce.Do(func() { close(s.ready) })
		},
		OnError: func(err error) {
			s.opts.logger.Warn("token watch interrupted, resuming", "bucket", bucket.Bucket(), "error", err)
		},
	}
	if s.named != nil {
		f.Keys = s.namedKeys()
	}
	f.Run(ctx)
}

// minSweep is the least time between two stale sweeps: each walks every
// key.
const minSweep = time.Second

// untilSweep is the time until the next stale sweep.
func (s *Set) untilSweep() time.Duration {
	s.applying.Lock()
	defer s.applying.Unlock()
	return max(time.Until(time.Unix(0, s.nextSweep)), minSweep)
}

// sweep is the last line of defence, as a Subscriber's stale timer: a value
// about to expire with nothing newer in sight means an announcement was
// missed, or the refresher is down. It reads each such key, and again
// every staleRecheck while it stays so.
func (s *Set) sweep(ctx context.Context, bucket jetstream.KeyValue) {
	now := time.Now().UnixNano()
	next := now + int64(staleRecheck)
	var due []string
	s.applying.Lock()
	for e := range s.keys.all() {
		if e.checkAt <= now {
			due = append(due, e.key)
			e.checkAt = now + int64(staleRecheck)
		}
		next = min(next, e.checkAt)
	}
	s.nextSweep = next
	s.applying.Unlock()
	for _, key := range due {
		s.get(ctx, bucket, key)
	}
}

// get reads key once and takes in what it finds. A failure is reported;
// the sweep, or the subscription, brings the value later.
func (s *Set) get(ctx context.Context, bucket jetstream.KeyValue, key string) {
	gctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
	e, err := bucket.Get(gctx, key)
	cancel()
	switch {
	case err == nil:
		s.apply(e.Key(), e.Revision(), e.Operation(), e.Value())
	case errors.Is(err, jetstream.ErrKeyNotFound):
		s.lookForRemoval(ctx, bucket, key) // not written yet, deleted by someone, or removed for good
	case ctx.Err() == nil:
		s.report(key, fmt.Errorf("subscriber: reading %s: %w", key, err))
	}
}

// lookForRemoval reads whether key's delete marker says it was removed for
// good, and takes the removal in if it does. A failure to read says
// nothing: the value held stays.
func (s *Set) lookForRemoval(ctx context.Context, bucket jetstream.KeyValue, key string) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
	defer cancel()
	rev, reason, err := kv.LastRemoval(ctx, s.js, bucket.Bucket(), key)
	if err != nil {
		s.opts.logger.Debug("cannot read whether the key was removed", "key", key, "error", err)
		return
	}
	if reason != "" {
		s.remove(key, rev, reason)
	}
}

// apply takes in a revision of key. A value that does not decode is
// reported and otherwise ignored: the last good one stays.
func (s *Set) apply(key string, revision uint64, op jetstream.KeyValueOp, value []byte) {
	if !s.follows(key) {
		return
	}
	// Values arrive from the subscription and from reads: one at a time,
	// or an older one could overwrite a newer.
	s.applying.Lock()
	defer s.applying.Unlock()
	e := s.keys.get(key)
	if s.stopped || (e != nil && e.holdsNewer(revision)) {
		return // already held, or older than what is held
	}
	if op != jetstream.KeyValuePut {
		if e != nil {
			s.opts.logger.Warn("token key was deleted; keeping the last token", "key", key, "revision", revision)
		}
		return
	}
	rec, err := kv.DecodeCredential(key, value)
	if err != nil {
		s.report(key, fmt.Errorf("subscriber: revision %d of %s: %w", revision, key, err))
		return
	}
	if e == nil {
		e = s.addLocked(key)
	}
	e.before.Store(e.current.Load())
	e.current.Store(&Token{Value: rec.Value, Revision: revision, ExpiresAt: rec.ExpiresAt})
	e.removal.Store(nil) // a value after a removal: the key is back
	swapprobe.Swapped(key, revision)
	s.planCheckLocked(e, rec.ExpiresAt.Add(-min(rec.Lifetime()/4, time.Minute)))
	s.overcome(key)
	s.changedLocked(e)
}

// remove takes in key's removal at revision: Current, Refresh and
// Transport say so from then on, OnSetError and Err too, and Updated
// fires.
func (s *Set) remove(key string, revision uint64, reason string) {
	if !s.follows(key) {
		return
	}
	s.applying.Lock()
	defer s.applying.Unlock()
	e := s.keys.get(key)
	if s.stopped || (e != nil && e.holdsNewer(revision)) {
		return
	}
	if e == nil {
		e = s.addLocked(key)
	}
	r := &removal{revision: revision, reason: reason}
	e.removal.Store(r)
	e.checkAt = math.MaxInt64 // nothing to look after
	s.report(key, r.error(key))
	s.changedLocked(e)
}

// addLocked adds an entry for key. Callers hold s.applying.
func (s *Set) addLocked(key string) *entry {
	// The key may be a piece of a message's subject: keep only its bytes.
	e := &entry{key: strings.Clone(key), checkAt: math.MaxInt64}
	s.keys.add(e)
	return e
}

// planCheckLocked has e's value read from the bucket at stale if nothing
// newer comes by then. Callers hold s.applying.
func (s *Set) planCheckLocked(e *entry, stale time.Time) {
	e.checkAt = stale.UnixNano()
	if e.checkAt < s.nextSweep {
		s.nextSweep = e.checkAt
		select {
		case s.sooner <- struct{}{}:
		default:
		}
	}
}

// changedLocked wakes what waits on e's change, Updated and OnSetRotate.
// Callers hold s.applying.
func (s *Set) changedLocked(e *entry) {
	s.waiting.wake(e.key)
	select {
	case s.updated <- struct{}{}:
	default:
	}
	s.cb.changed(e)
}

// report records a problem with key ("" for the Set's own), logs it and
// hands it to OnSetError. It never blocks on the callback.
func (s *Set) report(key string, err error) {
	s.lastErr.Store(&keyError{key: key, err: err})
	if key == "" {
		s.opts.logger.Warn("cannot follow the tokens", "error", err)
	} else {
		s.opts.logger.Warn("token not usable", "key", key, "error", err)
	}
	s.cb.reportError(key, err)
}

// overcome forgets key's problem ("" for the Set's own): a good value of
// it came, or a read succeeded.
func (s *Set) overcome(key string) {
	if p := s.lastErr.Load(); p != nil && p.key == key {
		s.lastErr.CompareAndSwap(p, nil)
	}
	s.cb.overcome(key)
}
