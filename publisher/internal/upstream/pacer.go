package upstream

import (
	"context"
	"time"
)

// Pacer lets upstream calls go one at a time, on an even schedule decided
// as each call goes, so that no second ever sees more calls leave than the
// ceiling it was made for.
//
// A token bucket (golang.org/x/time/rate) books every waiter a slot in
// advance. When the process stalls past several slots (a GC pause, a
// descheduled thread, a paused VM), their waiters wake together and their
// calls leave in one burst: at 50/s, a benchmark saw 51 and 52 calls reach
// WeChat within one second that way. Here one waiter at a time holds the
// turn and goes when the clock says so: a stall pushes the schedule back
// instead of releasing everyone it delayed.
//
// The schedule runs 5% under the ceiling. Where that leaves room for a
// whole call in every second (a ceiling of 40/s and more), the schedule
// has up to one interval of slack: a call that woke a little late still
// keeps it, instead of every late wake-up lengthening it, and a stall lets
// at most two calls go together.
type Pacer struct {
	interval time.Duration // between calls on schedule
	slack    time.Duration // how early a call may go, at most interval
	turn     chan struct{} // held by the one waiter whose call goes next
	next     time.Time     // when the next call goes on schedule; guarded by turn

	now   func() time.Time                                 // time.Now, but for tests
	sleep func(ctx context.Context, d time.Duration) error // sleepCtx, but for tests
}

// paceMargin is how far under its ceiling a pacer runs: room for calls to
// bunch a little on their way.
const paceMargin = 0.05

// NewPacer returns a pacer that lets at most ceiling calls go within any
// one second, by when it lets them go.
func NewPacer(ceiling float64) *Pacer {
	pace := ceiling * (1 - paceMargin)
	interval := time.Duration(float64(time.Second) / pace)
	// Within one second, calls on schedule number at most pace+1, and the
	// slack adds slack/interval more: that must stay within the ceiling.
	slackCalls := min(max(ceiling*paceMargin-1, 0), 1)
	return &Pacer{
		interval: interval,
		slack:    time.Duration(slackCalls * float64(interval)),
		turn:     make(chan struct{}, 1),
		now:      time.Now,
		sleep:    sleepCtx,
	}
}

// Wait blocks until the caller's call may go, or ctx ends.
func (p *Pacer) Wait(ctx context.Context) error {
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.turn }()
	for {
		// The select above may have taken the turn from a ctx already
		// ended; no call goes for it.
		if err := ctx.Err(); err != nil {
			return err
		}
		now := p.now()
		if d := p.next.Add(-p.slack).Sub(now); d > 0 {
			if err := p.sleep(ctx, d); err != nil {
				return err
			}
			continue
		}
		// More than the slack behind (the pacer was idle, or the process
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
