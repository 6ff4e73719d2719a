package subscriber

import "sync"

// setCallbacks runs OnSetRotate and OnSetError on the Set's callback
// goroutine: one at a time, under no lock that delivery or Refresh needs,
// and only once NewSet has returned. A key whose values come faster than
// the callback returns is queued once, and the callback gets its newest.
type setCallbacks struct {
	gate
	s *Set

	mu      sync.Mutex
	rotated []*entry         // entries changed since their value was passed on (each queued once)
	errs    map[string]error // the latest problem of each key, not passed on yet
	signal  chan struct{}    // something to pass on
}

func (c *setCallbacks) init(s *Set) {
	c.s, c.signal = s, make(chan struct{}, 1)
	wanted := s.opts.onSetRotate != nil || s.opts.onSetError != nil
	c.gate.init(s.ctx, wanted)
	if wanted {
		go c.loop()
	}
}

// changed queues e's new value for OnSetRotate. Values that come before
// NewSet returns are queued too: the first value of each key is passed on.
func (c *setCallbacks) changed(e *entry) {
	if c.s.opts.onSetRotate == nil || !e.queued.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	c.rotated = append(c.rotated, e)
	c.mu.Unlock()
	c.wake()
}

// reportError hands err about key to OnSetError, in place of a problem of
// the key not yet passed on. Problems met before NewSet returned are not:
// NewSet has overcome them, or returns the last one in its error.
func (c *setCallbacks) reportError(key string, err error) {
	if c.s.opts.onSetError == nil || !c.begun.Load() {
		return
	}
	c.mu.Lock()
	if c.errs == nil {
		c.errs = map[string]error{}
	}
	c.errs[key] = err
	c.mu.Unlock()
	c.wake()
}

// overcome drops key's problem not yet passed on: a good value came since.
func (c *setCallbacks) overcome(key string) {
	if c.s.opts.onSetError == nil {
		return
	}
	c.mu.Lock()
	delete(c.errs, key)
	c.mu.Unlock()
}

func (c *setCallbacks) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// takeRotated returns the entries queued since the last call.
func (c *setCallbacks) takeRotated() []*entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	rotated := c.rotated
	c.rotated = nil
	return rotated
}

// takeError returns a problem to pass on, if any.
func (c *setCallbacks) takeError() (key string, err error, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, err := range c.errs {
		delete(c.errs, key)
		return key, err, true
	}
	return "", nil, false
}

func (c *setCallbacks) loop() {
	defer close(c.ended)
	s := c.s
	if !c.await() {
		return
	}
	for {
		for _, e := range c.takeRotated() {
			e.queued.Store(false) // a change from now on is queued again
			t := e.current.Load()
			if t == nil || t.Revision <= e.notified {
				continue // passed on already, or a removal (OnSetError's)
			}
			e.notified = t.Revision
			if !c.call(func() { s.opts.onSetRotate(s, e.key, *t) }) {
				return
			}
		}
		for {
			key, err, ok := c.takeError()
			if !ok {
				break
			}
			if !c.call(func() { s.opts.onSetError(s, key, err) }) {
				return
			}
		}
		select {
		case <-c.signal:
		case <-s.ctx.Done():
			return
		}
	}
}
