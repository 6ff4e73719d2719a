package loop

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"
)

// term is one period of leadership and everything that runs during it.
type term struct {
	// ctx ends when the term ends, by shutdown or by losing the lease: no
	// new work starts after it.
	ctx context.Context
	// work bounds fetches and writes already under way. On shutdown it
	// outlives ctx until they are done, so a value WeChat already issued
	// is not thrown away; when the lease is lost it ends at once.
	work   context.Context
	bucket jetstream.KeyValue
	// lease is the term's lease: no fetch starts while it is in doubt, or
	// that could outlast it. Nil in tests that hold no lease.
	lease Leadership

	onPanic func(any) // a goroutine's panic is logged, not fatal

	mu       sync.Mutex
	stopping bool
	wg       sync.WaitGroup
}

// Leadership is what a term needs of the lease: when it is gone, and
// whether it covers a call (lease.Held is one).
type Leadership interface {
	Lost() <-chan struct{}
	Covers(ctx context.Context, d time.Duration) bool
}

// spawn runs f in a goroutine the term waits for, unless the term is
// ending; it reports whether f runs.
func (t *term) spawn(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				t.onPanic(p)
			}
		}()
		f()
	}()
	return true
}

func (t *term) ending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopping
}

// drain stops new goroutines and waits for the running ones.
func (t *term) drain() {
	t.mu.Lock()
	t.stopping = true
	t.mu.Unlock()
	t.wg.Wait()
}

// coversCall reports whether the term's lease surely covers a call that
// may take d, once it is known to be held (see lease.Held.Covers); false
// if the term ends first.
func (t *term) coversCall(d time.Duration) bool {
	return t.lease == nil || t.lease.Covers(t.ctx, d)
}

// Lead runs the leader's duties on bucket until ctx ends or the lease is
// lost: it serves the refresh endpoint and runs the schedule, and it
// removes the keys to remove for good.
func (c *Credentials) Lead(ctx context.Context, bucket jetstream.KeyValue, held Leadership) error {
	tctx, endTerm := context.WithCancel(ctx)
	defer endTerm()
	work, endWork := context.WithCancel(context.WithoutCancel(ctx))
	defer endWork()
	led := make(chan struct{})
	defer close(led)
	go func() {
		// Watched until Lead returns, the draining included: a lease lost
		// while fetches finish at shutdown still cuts them short.
		select {
		case <-held.Lost():
			// From here on this replica may not call WeChat: whatever
			// is under way is cut short now, before cleaning up.
			endWork()
			endTerm()
		case <-led:
		}
	}()
	t := &term{ctx: tctx, work: work, bucket: bucket, onPanic: c.logPanic, lease: held}
	c.term.Store(t)
	defer c.term.Store(nil)
	// However the term ends, it ends whole: nothing it started outlives it.
	// Drain first: a flight that ends while the term drains sets its
	// credential's timer again, and only a draining term refuses to.
	// Timers left by this term would hold back the next term's, which
	// never replace a timer set no later.
	defer func() {
		endTerm()
		t.drain()
		for _, cr := range c.list() {
			cr.stopTimer()
		}
	}()
	c.catchUp(tctx)
	// What the bucket holds may never have been announced: the leader
	// before this one may have died between writing and announcing.
	for _, cr := range c.list() {
		c.announceStored(cr)
	}
	c.removeNow(t)

	svc, err := c.serve(t)
	if err != nil {
		return err
	}
	// What a restart or a takeover found still valid in the bucket is used
	// as it is: the operator sees that nothing needs fetching.
	stillValid := c.validTokens()
	cl := cronLogger{log: c.log, scrub: c.scrub}
	cr := cron.New(cron.WithLogger(cl), cron.WithChain(cron.Recover(cl), cron.SkipIfStillRunning(cl)))
	id := cr.Schedule(c.cfg.Schedule, cron.FuncJob(func() { c.check(t) }))
	cr.Start()
	// The first check runs now, through the same wrappers as the scheduled
	// ones, rather than a period later.
	t.spawn(cr.Entry(id).WrappedJob.Run)
	if c.cfg.Duty != nil {
		t.spawn(func() { c.cfg.Duty(tctx) })
	}
	c.log.Info("leading: refreshing tokens", "credentials", c.Len(), "still_valid", stillValid, "schedule", c.cfg.ScheduleSpec)

	<-tctx.Done()
	<-cr.Stop().Done()
	c.stopEndpoint(ctx, svc)
	return nil
}
