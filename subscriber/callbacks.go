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
	errs  chan error    // problems for OnError; full means dropped
	ready chan struct{} // closed when New has returned the subscriber
	ended chan struct{} // closed when the callback goroutine has ended, or never ran
	begun atomic.Bool   // start was called

	mu      sync.Mutex
	closed  bool // no callback starts any more
	running bool // a callback is under way
}

// errBacklog is how many problems wait for OnError before more are dropped.
const errBacklog = 16

func (c *callbacks) init(s *Subscriber) {
	c.s, c.errs, c.ready, c.ended = s, make(chan error, errBacklog), make(chan struct{}), make(chan struct{})
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

// reportError queues err for OnError, or drops it if the backlog is full.
// Problems met before New returned are not queued: New has overcome them,
// or returns the last one in its error.
func (c *callbacks) reportError(err error) {
	if c.s.opts.onError == nil || !c.begun.Load() {
		return
	}
	select {
	case c.errs <- err:
	default:
	}
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
		case err := <-c.errs:
			if !c.call(func() { s.opts.onError(s, err) }) {
				return
			}
		case <-s.ctx.Done():
			return
		}
	}
}

// call runs f unless the subscriber is closed, and reports whether it did.
func (c *callbacks) call(f func()) bool {
	c.mu.Lock()
	if c.closed {
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
