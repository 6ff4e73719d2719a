package loop

import (
	"errors"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// What is asked of a credential from outside its own schedule: its token,
// by the credentials fetched with it (parents.go), and a rotation, by a
// service's refresh request (endpoint.go). Each decision is taken under
// the credential's lock, with the rotation it starts or joins.

// waitForParent makes c, whose parent has no token, wait for it: until
// err.until, or after a backoff of its own (delay, given its failures in
// a row) when that is past.
func (c *credential) waitForParent(err *parentWaitError, now time.Time, delay func(failures int) time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.failures++
	until := err.until
	if !until.After(now) {
		until = now.Add(delay(c.st.failures))
	}
	c.st.retryAt, c.st.lastErr = until, err
	return until
}

// parentCame lifts the wait of a credential that waited for its parent's
// token, now that the parent has one; it reports whether it waited.
func (c *credential) parentCame() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var waiting *parentWaitError
	if !errors.As(c.st.lastErr, &waiting) {
		return false
	}
	c.st.clearFailure()
	return true
}

// parentToken returns the parent's valid value and revision, or the
// flight to wait for: one started, shared with its own schedule, when it
// has none and is due; none while it waits after a failure or a repeated
// answer.
func (c *credential) parentToken(now time.Time, start func(f *flight, base outcome) bool) (rec *kv.Credential, rev uint64, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, rec, rev = c.flight, c.st.validRecord(now), c.st.rev
	if f == nil && rec == nil && !now.Before(c.due(now)) {
		f, _ = c.startOrJoin(start)
	}
	return rec, rev, f
}

// parentAfter returns the parent's valid value, revision and next attempt
// once its flight landed.
func (c *credential) parentAfter(now time.Time) (rec *kv.Credential, rev uint64, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.validRecord(now), c.st.rev, c.st.retryAt
}

// force starts a forced rotation of the credential, whose token a call
// made with revision used refused, or joins the one under way; it returns
// nil when the token was replaced meanwhile, and an error when a forced
// refresh ran within minInterval (since says how long ago).
func (c *credential) force(used uint64, now time.Time, minInterval time.Duration, start func(f *flight, base outcome) bool) (f *flight, since time.Duration, limited bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.flight != nil:
		return c.flight, 0, false
	case c.st.rev != used: // replaced meanwhile
		return nil, 0, false
	case !c.st.lastForced.IsZero() && now.Sub(c.st.lastForced) < minInterval:
		return nil, now.Sub(c.st.lastForced), true
	}
	c.st.lastForced = now
	f, _ = c.startOrJoin(start)
	return f, 0, false
}

// admission is how a refresh request for the credential was decided
// (admit): answered with the value held, or with the rotation it started
// or joined.
type admission struct {
	c       *credential
	f       *flight // the rotation the answer waits on; nil when the answer is now
	started bool    // this request started f
	behind  bool    // f stored the revision the request names: decide again once f lands
	forced  bool    // this request started a forced refresh
	verdict verdict // the answer now, when f is nil
	rev     uint64
	rec     *kv.Credential
	since   time.Duration // since the last forced refresh, for rateLimited
	quiet   time.Time     // until when WeChat is not asked again, for repeating
}

// verdict is the answer admit decided on, when it is not a rotation's.
type verdict int

const (
	removedVerdict     verdict = iota // no longer kept: unknown_app
	futureVerdict                     // the revision named is newer than the one known: bad_request
	repeatingVerdict                  // WeChat repeats the value that expired; asked again later
	currentVerdict                    // no revision named: the value held
	olderVerdict                      // an older revision named: the value held
	rateLimitedVerdict                // a forced refresh ran too recently
	stoppingVerdict                   // no rotation could start: the term is ending
)

// admit decides a refresh request naming stale (nil: none), as the
// contract says, and starts or joins the rotation that answers it.
func (c *credential) admit(stale *uint64, now time.Time, minInterval time.Duration, start func(f *flight, base outcome, m mode, reason string) bool) admission {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.st
	ad := admission{c: c, rev: s.rev}
	if s.removed { // by a reload a moment ago
		ad.verdict = removedVerdict
		return ad
	}
	valid := s.validRecord(now)
	ad.rec = valid
	begin := func(m mode) {
		ad.f, ad.started = c.startOrJoin(func(f *flight, base outcome) bool { return start(f, base, m, kv.ReasonRequested) })
		if ad.f == nil {
			ad.verdict = stoppingVerdict
		}
	}
	switch {
	case stale != nil && c.flight != nil && *stale > c.flight.from:
		// The rotation under way has stored the revision named stale, or
		// is storing it: services that read the bucket, or took the new
		// value in at once, can name it before the rotation lands. It
		// cannot be the rotation that replaces it.
		ad.f, ad.behind = c.flight, true
	case stale != nil && *stale > s.rev:
		ad.verdict = futureVerdict
	case valid == nil && c.flight == nil && s.rec != nil && now.Before(s.quietUntil):
		// WeChat answered with the value that expired, and is not asked
		// again before quietUntil: a request must not make it sooner.
		ad.verdict, ad.rec, ad.quiet = repeatingVerdict, s.rec, s.quietUntil
	case valid == nil:
		// No valid value at all: fetch one, whatever the request named.
		begin(modeScheduled)
	case stale == nil:
		ad.verdict = currentVerdict
	case *stale < s.rev:
		ad.verdict = olderVerdict
	case c.flight != nil:
		ad.f = c.flight
	case !s.lastForced.IsZero() && now.Sub(s.lastForced) < minInterval:
		ad.verdict, ad.since = rateLimitedVerdict, now.Sub(s.lastForced)
	default:
		s.lastForced = now
		ad.forced = true
		begin(modeForced)
	}
	return ad
}
