package loop

import (
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// state is what the refresher knows of a credential's key, and what it
// decided about it.
type state struct {
	removed    bool           // by a reload: no longer refreshed
	rev        uint64         // newest revision of the key seen; 0 when there is none
	rec        *kv.Credential // the value at rev; nil when absent, deleted or undecodable
	refreshAt  time.Time      // when rec enters its refresh window, spread included
	lastForced time.Time      // start of the last forced refresh
	failures   int            // consecutive failed rotations (fetch or write)
	retryAt    time.Time      // no fetch before this, after a failure
	lastErr    error          // the failure that set retryAt
	pending    *kv.Credential // fetched but not stored yet: written before anything is fetched
	announced  uint64         // the newest revision this replica published on the Value subject
	quietUntil time.Time      // WeChat answered with the value held: not asked again before this
	// unanswered holds when each call that got no answer went, oldest
	// first, since the last call answered with a value: WeChat may have
	// issued the value the next answer brings at any of them
	// (Attempt.IssuedFrom).
	unanswered []time.Time
	// gen counts the changes of what a fetch is made with (a secret a
	// reload replaced, an authorizer's newer refresh token): a refusal of
	// the one before is no failure.
	gen uint64
	// retryIf, set by a Retry that came while a flight was under way,
	// lifts the pause of the failure that flight records, if it matches.
	retryIf func(error) bool
}

// flight is the credential's current attempt: one rotation, shared by
// everyone who needs one while it runs.
type flight struct {
	from uint64 // the revision it replaces
	done chan struct{}
	out  outcome // set before done closes
}

// outcome is what a rotation left in the bucket.
type outcome struct {
	rev       uint64
	rec       *kv.Credential // nil when there is no valid value
	refreshed bool
	err       error
}

// pendingSuperseded reports whether the bucket holds a newer value than
// the one fetched but not stored (another leader's, while this replica
// could not write): WeChat has ended the older one, or will, so it must
// not be stored. Callers hold c.mu.
func (s *state) pendingSuperseded() bool {
	return s.pending != nil && s.rec != nil && s.rec.FetchedAt.After(s.pending.FetchedAt)
}

// validRecord returns the value held if it has not expired. Callers hold
// c.mu.
func (s *state) validRecord(now time.Time) *kv.Credential {
	if s.rec != nil && s.rec.ValidAt(now) {
		return s.rec
	}
	return nil
}

// clearFailure forgets the failures: the next fetch may go at once.
// Callers hold c.mu.
func (s *state) clearFailure() {
	s.failures, s.retryAt, s.lastErr = 0, time.Time{}, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
