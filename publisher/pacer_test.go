package publisher

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// stallingClock is a pacer's clock: each sleep advances it by the time
// asked for plus a stall, as a process that was not scheduled in time.
type stallingClock struct {
	mu     sync.Mutex
	t      time.Time
	stalls []time.Duration // added to the sleeps, in order
}

func (c *stallingClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stallingClock) sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stalls) > 0 {
		d += c.stalls[0]
		c.stalls = c.stalls[1:]
	}
	c.t = c.t.Add(d)
	return nil
}

// departures runs n calls through p one after another, and returns when
// each went by clock.
func departures(t *testing.T, p *pacer, clock *stallingClock, n int) []time.Time {
	t.Helper()
	var left []time.Time
	for range n {
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		left = append(left, clock.now())
	}
	return left
}

func TestPacerReleasesNoBurstAfterAStall(t *testing.T) {
	const interval = 20 * time.Millisecond
	clock := &stallingClock{t: time.Unix(1e9, 0), stalls: []time.Duration{0, 5 * interval}}
	p := newPacer(float64(time.Second / interval))
	p.now, p.sleep = clock.now, clock.sleep

	left := departures(t, p, clock, 8)
	// The fourth call woke five intervals late. Slots booked in advance
	// would let the calls booked meanwhile go with it; here at most two go
	// within any interval, the schedule's slack, and never three.
	for i := 2; i < len(left); i++ {
		if span := left[i].Sub(left[i-2]); span < interval {
			t.Errorf("calls %d to %d left within %v, want at least %v", i-2, i, span, interval)
		}
	}
	if got, want := left[3].Sub(left[0]), (2+5)*interval; got != want {
		t.Errorf("the stalled call left %v after the first, want %v", got, want)
	}
}

func TestPacerKeepsTheScheduleWhenWakingLate(t *testing.T) {
	const interval, late, calls = 20 * time.Millisecond, 5 * time.Millisecond, 50
	stalls := make([]time.Duration, calls)
	for i := range stalls {
		stalls[i] = late // every sleep overshoots, as timers on a busy machine do
	}
	clock := &stallingClock{t: time.Unix(1e9, 0), stalls: stalls}
	p := newPacer(float64(time.Second / interval))
	p.now, p.sleep = clock.now, clock.sleep

	left := departures(t, p, clock, calls)
	// The lateness of one wake-up is not added to the next: 50 calls take
	// 48 intervals (two go at once), plus one lateness, not 49 of them.
	if got, want := left[calls-1].Sub(left[0]), (calls-2)*interval+late; got != want {
		t.Errorf("%d calls took %v, want %v", calls, got, want)
	}
}

func TestPacerPacesConcurrentCallers(t *testing.T) {
	const interval, callers = 2 * time.Millisecond, 20
	p := newPacer(float64(time.Second / interval))
	var (
		mu   sync.Mutex
		left []time.Time
		wg   sync.WaitGroup
	)
	record := p.now
	p.now = func() time.Time { // every time the pacer reads the clock
		now := record()
		mu.Lock()
		defer mu.Unlock()
		left = append(left, now)
		return now
	}
	for range callers {
		wg.Go(func() {
			if err := p.wait(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// The first reading is the first call going, the last the last call.
	if total := left[len(left)-1].Sub(left[0]); total < (callers-2)*interval {
		t.Errorf("%d callers went within %v, want at least %v", callers, total, (callers-2)*interval)
	}
}

func TestPacerWaiterThatGivesUpFreesTheTurn(t *testing.T) {
	p := newPacer(1.0 / 3600) // one call an hour
	// The first two may go at once.
	for range 2 {
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error)
	go func() { waiting <- p.wait(ctx) }()
	go func() { waiting <- p.wait(ctx) }() // queued behind the first
	cancel()
	for range 2 {
		if err := <-waiting; !errors.Is(err, context.Canceled) {
			t.Fatalf("wait after cancel: %v, want context.Canceled", err)
		}
	}
	select {
	case p.turn <- struct{}{}:
	default:
		t.Fatal("a waiter that gave up still holds the turn")
	}
}
