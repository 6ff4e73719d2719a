package loop

import (
	"context"

	"github.com/wxtoken/wxtoken/kv"
)

// What the leader's guardian (the quota poller, apart from the loop) needs
// of the loop: the apps' ledgers in the term's bucket, and a rotation of a
// value another party's fetch may have ended.

// ReadLedger returns appid's ledger as the term's bucket holds it; ok is
// false when it holds none. It returns ErrEnding when no term is under way.
func (c *Credentials) ReadLedger(ctx context.Context, appid string) (l kv.Ledger, ok bool, err error) {
	t := c.term.Load()
	if t == nil || t.ending() {
		return kv.Ledger{}, false, ErrEnding
	}
	return c.ledger.Read(ctx, t.bucket, appid)
}

// UpdateLedger applies change to appid's ledger in the term's bucket with
// compare-and-swap, as the loop's own counts do; change returns false to
// write nothing. It returns ErrEnding when no term is under way.
func (c *Credentials) UpdateLedger(ctx context.Context, appid string, change func(*kv.Ledger) bool) error {
	t := c.term.Load()
	if t == nil || t.ending() {
		return ErrEnding
	}
	return c.ledger.Update(ctx, t.bucket, appid, change)
}

// Rotate starts a rotation of key now, whatever its schedule, or joins the
// one under way, and reports whether one is under way: for a value another
// party's fetch ends (or ended). With check, the value held is first
// checked with WeChat, as a refresh request's is, and rotated only if it
// is dead; a dead one is blamed on nobody (the caller said whose doing it
// was). Nothing starts when no term is under way or key is unknown.
func (c *Credentials) Rotate(key string, check bool, reason string) bool {
	t := c.term.Load()
	cr := c.credential(key)
	if t == nil || t.ending() || cr == nil {
		return false
	}
	m := modeScheduled
	if check {
		m = modeChecked
	}
	return cr.startNow(func(f *flight, base outcome) bool { return c.fly(t, cr, f, m, reason, base) })
}
