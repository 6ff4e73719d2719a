package publisher

import (
	"context"
	"time"
)

// pacer lets upstream calls go one at a time, each at least interval after
// the one before, counted from when that one was let go.
//
// A token bucket (golang.org/x/time/rate, burst 1) books every waiter a slot
// in advance. When the process stalls past several slots (a GC pause, a
// descheduled thread, a paused VM), their waiters wake together and their
// calls leave in one burst: at 50/s, a benchmark saw 51 and 52 calls reach
// WeChat within one second that way. Here a late waiter's lateness moves
// everyone behind it back, so calls never leave closer than interval.
type pacer struct {
	interval time.Duration
	turn     chan struct{} // held by the one waiter whose call goes next
	last     time.Time     // when the last call was let go; guarded by turn

	now   func() time.Time                                 // time.Now, but for tests
	sleep func(ctx context.Context, d time.Duration) error // sleepCtx, but for tests
}

// newPacer returns a pacer that lets perSecond calls go per second at most.
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
		d := p.last.Add(p.interval).Sub(p.now())
		if d <= 0 {
			break
		}
		if err := p.sleep(ctx, d); err != nil {
			return err
		}
	}
	p.last = p.now()
	return nil
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
