package loop

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A credential is one key of the token bucket that the refresher keeps
// fresh: an app's access_token, or what is fetched with it. What it is
// (key, kind, parent) is fixed for its life, and how it is fetched is an
// immutable identity a reload may replace; what changes with each
// rotation (state, state.go), the rotation under way (flight) and the
// timer that wakes it (wakeup) are guarded by its mutex, which only this
// file, parents.go (a child's wait for its parent's token), demand.go (a
// refresh request) and unanswered.go (the calls that got no answer) take.
type credential struct {
	key    string      // its key in the token bucket: an appid, "<corpid>-<agent>", or "<key>.<kind>"
	kind   string      // kv.KindToken, or the ticket's kind
	parent *credential // whose token it is fetched with: a ticket's app, an authorizer's platform; nil for none

	ident atomic.Pointer[identity]

	mu     sync.Mutex
	st     state
	flight *flight
	wake   wakeup
}

// identity is how a credential is fetched: its source, and the optional
// interfaces of the source, asserted once.
type identity struct {
	src      Source
	checker  Checker
	preparer Preparer
	urgent   Urgent
	budgeter Budgeter
	forcer   Forcer
	ender    Ender
	recorder Recorder
	saver    Saver
	remover  Remover
	hook     FailureHook
}

func newIdentity(src Source) *identity {
	id := &identity{src: src}
	id.checker, _ = src.(Checker)
	id.preparer, _ = src.(Preparer)
	id.urgent, _ = src.(Urgent)
	id.budgeter, _ = src.(Budgeter)
	id.forcer, _ = src.(Forcer)
	id.ender, _ = src.(Ender)
	id.recorder, _ = src.(Recorder)
	id.saver, _ = src.(Saver)
	id.remover, _ = src.(Remover)
	id.hook, _ = src.(FailureHook)
	return id
}

func (c *credential) id() *identity { return c.ident.Load() }

// wakeup is the timer that makes a credential rotate when it falls due.
type wakeup struct {
	timer *time.Timer
	at    time.Time
	gen   uint64 // tells a stopped timer's late callback from the current one's
}

// due is when the credential next needs a fetch. Callers hold c.mu.
func (c *credential) due(now time.Time) time.Time {
	s := &c.st
	switch {
	case now.Before(s.retryAt):
		return s.retryAt
	case s.pending != nil:
		// A value fetched but not stored must reach the bucket: its fetch
		// will kill the one there.
		return now
	case c.id().urgent != nil && c.id().urgent.Urgent(now):
		// The source has what must be done before the value is due (a
		// code to exchange before it expires).
		return now
	case s.rec == nil || !s.rec.ValidAt(now):
		return later(now, s.quietUntil)
	}
	return later(s.refreshAt, s.quietUntil)
}

// setRecord records the value at rev, and when it falls due within
// window, given the value's lifetime. Callers hold c.mu.
func (c *credential) setRecord(rev uint64, rec *kv.Credential, window func(time.Duration) time.Duration) {
	s := &c.st
	if rec == nil || s.rec == nil || rec.Value != s.rec.Value {
		s.quietUntil = time.Time{} // a new value: WeChat's repeats of the old one are over
	}
	s.rev, s.rec = rev, rec
	if rec != nil {
		w := window(rec.Lifetime())
		s.refreshAt = rec.ExpiresAt.Add(-w - spreadOf(c.key, rev, w/5))
	}
}

// startOrJoin returns the credential's rotation under way, or starts one
// with start; started says which. It returns nil when the credential was
// removed or start could not run it (the term is ending). Callers hold
// c.mu.
func (c *credential) startOrJoin(start func(f *flight, base outcome) bool) (f *flight, started bool) {
	if c.flight != nil {
		return c.flight, false
	}
	if c.st.removed {
		return nil, false
	}
	f = &flight{from: c.st.rev, done: make(chan struct{})}
	if !start(f, outcome{rev: c.st.rev, rec: c.st.rec}) {
		return nil, false
	}
	c.flight = f
	return f, true
}

// startIfDue starts a rotation if the credential is due, or joins the one
// under way; reason is ReasonInitial when there is no value.
func (c *credential) startIfDue(now time.Time, start func(f *flight, base outcome, reason string) bool) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.due(now).After(now) {
		return nil
	}
	reason := kv.ReasonScheduled
	if c.st.rec == nil {
		reason = kv.ReasonInitial
	}
	f, _ := c.startOrJoin(func(f *flight, base outcome) bool { return start(f, base, reason) })
	return f
}

// startNow starts a rotation now, whatever the credential's schedule, or
// joins the one under way, and reports whether one is under way (none
// when the credential was removed or start could not run it).
func (c *credential) startNow(start func(f *flight, base outcome) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, _ := c.startOrJoin(start)
	return f != nil
}

// land ends the flight with its outcome, taking in the revision it left
// if it is newer than the one known.
func (c *credential) land(f *flight, out outcome, window func(time.Duration) time.Duration) {
	c.mu.Lock()
	if out.rev > c.st.rev {
		c.setRecord(out.rev, out.rec, window)
	}
	c.flight = nil
	c.st.retryIf = nil
	c.mu.Unlock()
	f.out = out
	close(f.done)
}

// begin starts the work of a rotation: it drops a value fetched but not
// stored that the bucket holds a newer one than, and says whether the
// rotation is still needed (skip), and what it starts from: the value
// pending, and the pause after a failure (until retryAt, after lastErr).
func (c *credential) begin(now time.Time) (skip bool, pending *kv.Credential, retryAt time.Time, lastErr error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.pendingSuperseded() {
		// The rotation was for the value left to store alone unless the
		// newer one is due too.
		c.st.pending = nil
		if c.due(now).After(now) {
			return true, nil, time.Time{}, nil
		}
	}
	return false, c.st.pending, c.st.retryAt, c.st.lastErr
}

// stored records that the value fetched (or left) was written: nothing is
// pending, and the failures are over.
func (c *credential) stored(rec *kv.Credential) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rec == nil || c.st.pending == rec {
		c.st.pending = nil
	}
	c.st.clearFailure()
}

// keep holds a value fetched but not stored, to be written by the next
// rotation or between terms. onlyIfNone keeps one held already.
func (c *credential) keep(rec kv.Credential, onlyIfNone bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !onlyIfNone || c.st.pending == nil {
		c.st.pending = &rec
	}
}

// revision is the newest revision of the key seen.
func (c *credential) revision() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.rev
}

// record is the value held, or nil.
func (c *credential) record() *kv.Credential {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.rec
}

// held is the value held and its revision, read together.
func (c *credential) held() (uint64, *kv.Credential) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.rec == nil {
		return 0, nil
	}
	return c.st.rev, c.st.rec
}

// valid is the value held if it has not expired at now, or nil.
func (c *credential) valid(now time.Time) *kv.Credential {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.validRecord(now)
}

// observed takes in revision rev of the key, holding rec (nil: deleted or
// undecodable), unless the credential knows a newer one. On the leader,
// an older value over a newer one that is still valid (a backup restored,
// a repair carrying old values over) puts the newer one back, as a value
// fetched but not stored: older says so, and that the older one is not
// to be announced; putBack that this call put the newer one back. took
// is false when rev was not newer.
func (c *credential) observed(rev uint64, rec *kv.Credential, leading bool, now time.Time, window func(time.Duration) time.Duration) (took, older, putBack bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev <= c.st.rev {
		return false, false, false
	}
	held := c.st.validRecord(now)
	older = leading && rec != nil && held != nil && rec.Value != held.Value && rec.FetchedAt.Before(held.FetchedAt)
	switch {
	case older && c.st.pending == nil:
		c.st.pending, putBack = held, true
	case c.st.pending != nil && rec != nil && !rec.FetchedAt.Before(c.st.pending.FetchedAt):
		c.st.pending = nil // the bucket holds it, or a newer one
	}
	c.setRecord(rev, rec, window)
	return true, older, putBack
}

// wrote takes in the value a write outside a rotation stored (a repair's
// write-back, a leftover), and reports whether rev was newer than known.
func (c *credential) wrote(rev uint64, rec kv.Credential, window func(time.Duration) time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev <= c.st.rev {
		return false
	}
	c.setRecord(rev, &rec, window)
	return true
}

// announcing records that this replica publishes revision rev.
func (c *credential) announcing(rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.announced = max(c.st.announced, rev)
}

// toAnnounce returns the value the bucket holds if this replica has not
// published it, and records that it does; ok is false when there is
// nothing to publish, or a rotation under way will publish its own.
func (c *credential) toAnnounce() (rev uint64, rec kv.Credential, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil || c.st.rec == nil || c.st.rev <= c.st.announced {
		return 0, kv.Credential{}, false
	}
	c.st.announced = c.st.rev
	return c.st.rev, *c.st.rec, true
}

// quiet holds the next scheduled fetch back until askAgain.
func (c *credential) quiet(askAgain time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.quietUntil = askAgain
}

// failing counts a failure and returns how many there are in a row, unless
// the failure is a refusal of what a fetch of an older grant generation
// was made with (refused false).
func (c *credential) failing(gen uint64, class upstream.Class, checkGen bool) (failures int, refused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if checkGen && class == upstream.ClassConfig && gen != c.st.gen {
		return 0, false
	}
	c.st.failures++
	return c.st.failures, true
}

// pause records a failure and when the next fetch may go, unless a Retry
// that came during the flight lifts it.
func (c *credential) pause(until time.Time, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.retryIf != nil && c.st.retryIf(err) {
		c.st.retryIf = nil
		c.st.clearFailure()
		return
	}
	c.st.retryAt, c.st.lastErr = until, err
}

// retry lifts the pause of a failure waiting matches, now or, if a flight
// is under way, when it records its own; it reports whether it lifted one.
func (c *credential) retry(waiting func(error) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil {
		c.st.retryIf = waiting
	}
	if c.st.lastErr == nil || !waiting(c.st.lastErr) {
		return false
	}
	c.st.clearFailure()
	// A forced refresh refused for what was waited on rotated nothing:
	// a service that saw the value rejected may ask again now, as after
	// a renewal, not wait out the least interval between forced
	// refreshes.
	c.st.lastForced = time.Time{}
	return true
}

// renew records that what a fetch is made with changed (a reload's secret,
// an authorizer's newer refresh token): a fetch refused with the one
// before may go at once, forced or not, and a value WeChat repeated may be
// asked for again.
func (c *credential) renew(id *identity, window func(time.Duration) time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id != nil {
		c.ident.Store(id)
		c.st.quietUntil = time.Time{}
		if c.st.rec != nil {
			c.setRecord(c.st.rev, c.st.rec, window) // its refresh window may have changed
		}
	}
	c.st.gen++
	if upstream.ClassOf(c.st.lastErr) == upstream.ClassConfig {
		c.st.clearFailure()
		// A forced refresh refused for what was just replaced rotated
		// nothing: the service that saw the value rejected may ask again
		// now, and be served with the new secret, not told to wait out
		// the least interval between forced refreshes.
		c.st.lastForced = time.Time{}
	}
}

// generation is the credential's grant generation.
func (c *credential) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.gen
}

// leftover returns the value fetched but not stored, if it still should
// be, and the newest revision of the key seen. One the bucket has a newer
// value than, or that has expired (expired says so), is dropped.
func (c *credential) leftover(now time.Time) (rec *kv.Credential, rev uint64, expired *kv.Credential) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, rev = c.st.pending, c.st.rev
	if rec != nil && !rec.ValidAt(now) {
		expired = rec
	}
	if c.st.pendingSuperseded() || expired != nil {
		c.st.pending = nil
	}
	if c.st.pending == nil || c.st.removed {
		return nil, 0, expired
	}
	return rec, rev, nil
}

// restoring says what a repair of the bucket does with the credential:
// writes back its valid value, or leaves it to its rotation (busy: one is
// under way; pending: a value fetched but not stored waits, and may go at
// once, for its write failed for the bucket's sake, not WeChat's).
func (c *credential) restoring(now time.Time) (rec *kv.Credential, busy, pending bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, busy, pending = c.st.validRecord(now), c.flight != nil, c.st.pending != nil
	if !busy && pending {
		c.st.retryAt = time.Time{}
	}
	return rec, busy, pending
}

// A credential's wakeup: the timer that makes it rotate when it falls due.
// The loop plans it whenever what it knows of the credential changed; a
// term stops every timer when it ends.

// remove marks the credential removed by a reload: no timer is set for it
// again, and none of its own fires.
func (c *credential) remove() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.removed = true
	c.disarm()
}

// armLocked sets the credential's timer to due, unless it is already set
// no later, the credential was removed or the term is ending (ending
// tells); fire runs when it goes off. Callers hold c.mu.
func (c *credential) armLocked(due, now time.Time, ending func() bool, afterFunc func(time.Duration, func()) *time.Timer, fire func()) {
	// An ended term (a caller may hold one) must not touch the timer the
	// next term set.
	if c.st.removed || ending() {
		return
	}
	w := &c.wake
	if w.timer != nil {
		if !w.at.After(due) {
			return
		}
		w.timer.Stop()
		w.timer = nil
	}
	w.gen++
	gen := w.gen
	w.at = due
	w.timer = afterFunc(max(due.Sub(now), 0), func() {
		c.mu.Lock()
		if c.wake.gen == gen {
			c.wake.timer = nil
		}
		c.mu.Unlock()
		fire()
	})
}

// plan arms the timer for when the credential falls due, unless a flight
// under way will plan when it lands.
func (c *credential) plan(now time.Time, ending func() bool, afterFunc func(time.Duration, func()) *time.Timer, fire func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil {
		return
	}
	c.armLocked(c.due(now), now, ending, afterFunc, fire)
}

// dueOrArm reports whether the credential is due at now; if not, it arms
// the timer for when it is.
func (c *credential) dueOrArm(now time.Time, ending func() bool, afterFunc func(time.Duration, func()) *time.Timer, fire func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	due := c.due(now)
	if due.After(now) {
		c.armLocked(due, now, ending, afterFunc, fire)
		return false
	}
	return true
}

// disarm stops the timer. Callers hold c.mu.
func (c *credential) disarm() {
	if c.wake.timer != nil {
		c.wake.timer.Stop()
		c.wake.timer = nil
	}
}

// stopTimer stops the timer of a term that ends.
func (c *credential) stopTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.disarm()
}
