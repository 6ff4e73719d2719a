package subscriber

import (
	"context"
	"sync"
	"sync/atomic"
)

// gate is the lifecycle of a callback goroutine, a Subscriber's or a
// Set's: callbacks begin once the constructor has returned, run one at a
// time, and none starts once Close was called; Close does not wait for one
// under way (it may be the very caller).
type gate struct {
	life  context.Context // ends with Close
	ready chan struct{}   // closed when the constructor has returned
	ended chan struct{}   // closed when the callback goroutine has ended, or never ran
	begun atomic.Bool     // start was called

	mu      sync.Mutex
	closed  bool // no callback starts any more
	running bool // a callback is under way
}

// init readies the gate; when no callback is wanted, ended is closed at
// once.
func (g *gate) init(life context.Context, wanted bool) {
	g.life, g.ready, g.ended = life, make(chan struct{}), make(chan struct{})
	if !wanted {
		close(g.ended)
	}
}

// start lets callbacks begin: the constructor has returned.
func (g *gate) start() {
	g.begun.Store(true)
	close(g.ready)
}

// stop lets no callback start any more, and reports whether one is under
// way.
func (g *gate) stop() (running bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return g.running
}

// await waits for start, and reports false if Close came first.
func (g *gate) await() bool {
	select {
	case <-g.ready:
		return true
	case <-g.life.Done():
		return false
	}
}

// call runs f unless Close was called, and reports whether it did: no
// callback starts once Close was called.
func (g *gate) call(f func()) bool {
	g.mu.Lock()
	if g.closed || g.life.Err() != nil {
		g.mu.Unlock()
		return false
	}
	g.running = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
	}()
	f()
	return true
}

// callbacks runs OnRotate and OnError on the subscriber's callback
// goroutine: one at a time, under no lock that delivery or Refresh needs,
// and only once New has returned.
type callbacks struct {
	gate
	s *Subscriber

	// The latest problem for OnError, not yet passed on; a good token
	// since clears it. errReported signals one.
	errMu       sync.Mutex
	pendingErr  error
	errReported chan struct{}
}

func (c *callbacks) init(s *Subscriber) {
	c.s, c.errReported = s, make(chan struct{}, 1)
	wanted := s.opts.onRotate != nil || s.opts.onError != nil
	c.gate.init(s.ctx, wanted)
	if wanted {
		go c.loop()
	}
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
	if !c.await() {
		return
	}
	var last uint64
	for {
		var changed <-chan struct{} // nil without OnRotate: never ready
		if fn := s.opts.onRotate; fn != nil {
			changed = s.nextChange()
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
