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

func TestPacerKeepsCallsApartAfterAStall(t *testing.T) {
	const interval = 20 * time.Millisecond
	clock := &stallingClock{t: time.Unix(1e9, 0), stalls: []time.Duration{3 * interval}}
	p := newPacer(float64(time.Second / interval))
	p.now, p.sleep = clock.now, clock.sleep

	var left []time.Time
	for range 5 {
		if err := p.wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		left = append(left, clock.now())
	}
	// The second call woke three intervals late. Slots booked in advance
	// would let the third go with it; here it waits a whole interval.
	for i := 1; i < len(left); i++ {
		if gap := left[i].Sub(left[i-1]); gap < interval {
			t.Errorf("call %d left %v after call %d, want at least %v", i, gap, i-1, interval)
		}
	}
	if got, want := left[1].Sub(left[0]), 4*interval; got != want {
		t.Errorf("the stalled call left %v after the first, want %v", got, want)
	}
}

func TestPacerLetsConcurrentCallersGoOneByOne(t *testing.T) {
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
	if total := left[len(left)-1].Sub(left[0]); total < (callers-1)*interval {
		t.Errorf("%d callers went within %v, want at least %v", callers, total, (callers-1)*interval)
	}
}

func TestPacerWaiterThatGivesUpFreesTheTurn(t *testing.T) {
	p := newPacer(1.0 / 3600) // one call an hour
	if err := p.wait(context.Background()); err != nil {
		t.Fatal(err)
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
