package loop

import (
	"errors"
	"fmt"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Some credentials are fetched with another's token, their parent's: a
// ticket with its app's access_token, an authorizer's token with its
// platform's component token. A child is never asked for with a token
// about to be replaced or already dead: it waits for its parent's rotation
// under way, or starts one if the parent has no valid token; while the
// parent has none, the child waits, quietly, for the parent's next
// attempt, and goes the moment the parent gets one. When WeChat refuses
// the parent's token to the child, the token goes through the
// forced-refresh path a service's refresh request takes, and the child is
// asked for once more.

// parentWaitError is a fetch that needs its parent's token (a ticket's
// app, an authorizer's platform) while the parent has none: it waits,
// quietly, until the parent's next attempt or until the parent gets one
// (wakeChildren), whichever comes first. The parent's own failure is what
// is logged and announced.
type parentWaitError struct {
	parent string
	until  time.Time // the parent's next attempt; zero if not known
}

func (e *parentWaitError) Error() string {
	return "publisher: " + e.parent + " has no valid access_token to fetch with"
}

// tokenFor returns the current token of p, the parent a credential is
// fetched with, and its revision: after the rotation of it under way, if
// any, and after one started now if p is due (no token, or one in its
// window whose rotation has not started yet).
func (c *Credentials) tokenFor(t *term, p *credential) (kv.Credential, uint64, error) {
	rec, rev, f := p.parentToken(c.now(), func(f *flight, base outcome, reason string) bool {
		return c.fly(t, p, f, modeScheduled, reason, base)
	})
	if f == nil && rec != nil {
		return *rec, rev, nil
	}
	if f != nil {
		select {
		case <-f.done:
		case <-t.ctx.Done():
			return kv.Credential{}, 0, ErrEnding
		}
	}
	rec, rev, until := p.parentAfter(c.now())
	if rec == nil {
		return kv.Credential{}, 0, &parentWaitError{parent: p.key, until: until}
	}
	return *rec, rev, nil
}

// waitForParent makes cr, whose parent has no token, wait for it.
func (c *Credentials) waitForParent(cr *credential, err *parentWaitError) {
	until := cr.waitForParent(err, c.now(), func(failures int) time.Duration {
		return retryDelay(failures, c.cfg.RetryBackoff, c.cfg.RetryBackoffMax)
	})
	c.log.Debug("waiting for the token it is fetched with", "key", cr.key, "parent", err.parent,
		"next_attempt", until.UTC().Format(time.RFC3339))
}

// wakeChildren lets the credentials fetched with p's token go at once,
// those that waited for p to get one, now that it has one.
func (c *Credentials) wakeChildren(t *term, p *credential) {
	for _, child := range c.set.Load().children[p] {
		if child.parentCame() {
			c.plan(t, child)
		}
	}
}

// renewToken sends p's token, which a child's call refused at revision
// used, through the forced-refresh path a service's refresh request takes
// (checked with WeChat, then fetched, one flight for all), and returns the
// token after it.
func (c *Credentials) renewToken(t *term, p *credential, used uint64) (kv.Credential, uint64, error) {
	f, since, limited := p.force(used, c.now(), c.cfg.MinForceInterval, func(f *flight, base outcome) bool {
		return c.fly(t, p, f, modeForced, kv.ReasonRequested, base)
	})
	if limited {
		return kv.Credential{}, 0, fmt.Errorf("publisher: the ticket call refused the token of %s, which was force-refreshed %s ago; at most one per %s",
			p.key, Elapsed(since), c.cfg.MinForceInterval)
	}
	if f != nil {
		c.log.Info("a ticket call refused the token; refreshing it", "appid", p.key, "revision", used)
		select {
		case <-f.done:
		case <-t.ctx.Done():
			return kv.Credential{}, 0, ErrEnding
		}
	}
	return c.tokenFor(t, p)
}

// What a child asks of its parent, decided under the parent's lock, and
// the waiting of a child whose parent has no token, under the child's.

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
// is due (it has no value, or one about to be replaced whose timer has not
// gone off yet); none while it waits after a failure or a repeated answer.
// A value in its window is not handed out while it is due: the child's
// call waits for the pacer and the ledger's count before it goes, and on
// a busy machine a token with a moment left died on the way.
func (c *credential) parentToken(now time.Time, start func(f *flight, base outcome, reason string) bool) (rec *kv.Credential, rev uint64, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, rec, rev = c.flight, c.st.validRecord(now), c.st.rev
	if f == nil && !now.Before(c.due(now)) {
		reason := kv.ReasonScheduled
		if c.st.rec == nil {
			reason = kv.ReasonInitial
		}
		f, _ = c.startOrJoin(func(f *flight, base outcome) bool { return start(f, base, reason) })
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
