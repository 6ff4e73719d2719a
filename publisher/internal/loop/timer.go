package loop

import "time"

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
