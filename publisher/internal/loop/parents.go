package loop

import (
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
// any, and fetched first if there is none.
func (c *Credentials) tokenFor(t *term, p *credential) (kv.Credential, uint64, error) {
	rec, rev, f := p.parentToken(c.now(), func(f *flight, base outcome) bool {
		return c.fly(t, p, f, modeScheduled, kv.ReasonInitial, base)
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
