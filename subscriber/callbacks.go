package subscriber

import (
	"sync"
	"sync/atomic"
)

// callbacks runs OnRotate and OnError on the subscriber's callback
// goroutine: one at a time, under no lock that delivery or Refresh needs,
// and only once New has returned.
type callbacks struct {
	s     *Subscriber
	ready chan struct{} // closed when New has returned the subscriber
	ended chan struct{} // closed when the callback goroutine has ended, or never ran
	begun atomic.Bool   // start was called

	mu      sync.Mutex
	closed  bool // no callback starts any more
	running bool // a callback is under way

	// The latest problem for OnError, not yet passed on; a good token
	// since clears it. errReported signals one.
	errMu       sync.Mutex
	pendingErr  error
	errReported chan struct{}
}

func (c *callbacks) init(s *Subscriber) {
	c.s, c.ready, c.ended, c.errReported = s, make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
	if s.opts.onRotate == nil && s.opts.onError == nil {
		close(c.ended)
		return
	}
	go c.loop()
}

// start lets callbacks begin: New has returned.
func (c *callbacks) start() {
	c.begun.Store(true)
	close(c.ready)
}

// stop lets no callback start any more, and reports whether one is under
// way.
func (c *callbacks) stop() (running bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return c.running
}

// reportError hands err to OnError, in place of a problem not yet passed
// on. Problems met before New returned are not: New has overcome them, or
// returns the last one in its error.
func (c *callbacks) reportError(err error) {
	if c.s.opts.onError == nil || !c.begun.Load() {
		return
	}
	c.errMu.Lock()
	c.pendingErr = err
	c.errMu.Unlock()
	select {
	case c.errReported <- struct{}{}:
	default:
	}
}

// overcome drops a problem not yet passed on: a good token came since.
func (c *callbacks) overcome() {
	c.errMu.Lock()
	c.pendingErr = nil
	c.errMu.Unlock()
}

// takeError returns the problem to pass on, if any.
func (c *callbacks) takeError() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	err := c.pendingErr
	c.pendingErr = nil
	return err
}

func (c *callbacks) loop() {
	defer close(c.ended)
	s := c.s
	select {
	case <-c.ready:
	case <-s.ctx.Done():
		return
	}
	var last uint64
	for {
		var changed chan struct{} // nil without OnRotate: never ready
		if fn := s.opts.onRotate; fn != nil {
			s.mu.Lock()
			changed = s.changed
			s.mu.Unlock()
			if t := s.current.Load(); t != nil && t.Revision > last {
				last = t.Revision
				if !c.call(func() { fn(s, *t) }) {
					return
				}
				continue
			}
		}
		select {
		case <-changed:
		case <-c.errReported:
			if err := c.takeError(); err != nil && !c.call(func() { s.opts.onError(s, err) }) {
				return
			}
		case <-s.ctx.Done():
			return
		}
	}
}

// call runs f unless the subscriber is closed, or closing, and reports
// whether it did: no callback starts once Close was called.
func (c *callbacks) call(f func()) bool {
	c.mu.Lock()
	if c.closed || c.s.ctx.Err() != nil {
		c.mu.Unlock()
		return false
	}
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()
	f()
	return true
}
