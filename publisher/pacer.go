package publisher

import (
	"context"
	"time"
)

// pacer lets upstream calls go one at a time, on an even schedule of one
// per interval, decided when each call goes.
//
// A token bucket (golang.org/x/time/rate) books every waiter a slot in
// advance. When the process stalls past several slots (a GC pause, a
// descheduled thread, a paused VM), their waiters wake together and their
// calls leave in one burst: at 50/s, a benchmark saw 51 and 52 calls reach
// WeChat within one second that way. Here one waiter at a time holds the
// turn, and goes when the clock says so, so a stall releases at most two
// calls together (the schedule's one interval of slack) and pushes the rest
// back. The slack is what lets a call that woke a little late keep the
// schedule, instead of every late wake-up lengthening it.
type pacer struct {
	interval time.Duration
	turn     chan struct{} // held by the one waiter whose call goes next
	next     time.Time     // when the next call goes on schedule; guarded by turn

	now   func() time.Time                                 // time.Now, but for tests
	sleep func(ctx context.Context, d time.Duration) error // sleepCtx, but for tests
}

// newPacer returns a pacer that lets perSecond calls go per second, with at
// most two in any interval of 1/perSecond.
func newPacer(perSecond float64) *pacer {
	return &pacer{
		interval: time.Duration(float64(time.Second) / perSecond),
		turn:     make(chan struct{}, 1),
		now:      time.Now,
		sleep:    sleepCtx,
	}
}

// wait blocks until the caller's call may go, or ctx ends.
func (p *pacer) wait(ctx context.Context) error {
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.turn }()
	for {
		now := p.now()
		if d := p.next.Add(-p.interval).Sub(now); d > 0 {
			if err := p.sleep(ctx, d); err != nil {
				return err
			}
			continue
		}
		// More than an interval behind (the pacer was idle, or the process
		// stalled): the schedule restarts from now, with no burst to catch up.
		p.next = later(p.next, now).Add(p.interval)
		return nil
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
