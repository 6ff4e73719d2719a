package upstream

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
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

// pacerOn returns a pacer for ceiling that runs on clock.
func pacerOn(clock *stallingClock, ceiling float64) *Pacer {
	p := NewPacer(ceiling)
	p.now, p.sleep = clock.now, clock.sleep
	return p
}

// departures runs n calls through p one after another, and returns when
// each went by clock.
func departures(t *testing.T, p *Pacer, clock *stallingClock, n int) []time.Time {
	t.Helper()
	var left []time.Time
	for range n {
		if err := p.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		left = append(left, clock.now())
	}
	return left
}

// mostInOneSecond is the most of times, in order, within any one second
// (both ends included).
func mostInOneSecond(times []time.Time) int {
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) > time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func TestPacerNeverExceedsItsCeiling(t *testing.T) {
	for _, ceiling := range []float64{1, 2, 5, 10, 20, 21.5, 29.9, 30, 39, 40, 41, 50, 1000} {
		// Sleeps overshoot by up to a third of an interval, and one in ten
		// by up to ten intervals: late timers and stalls.
		interval := NewPacer(ceiling).interval
		random := rand.New(rand.NewPCG(1, uint64(ceiling*10)))
		stalls := make([]time.Duration, 10*int(ceiling)+20)
		for i := range stalls {
			stalls[i] = time.Duration(random.Int64N(int64(interval / 3)))
			if random.IntN(10) == 0 {
				stalls[i] = time.Duration(random.Int64N(int64(10 * interval)))
			}
		}
		clock := &stallingClock{t: time.Unix(1e9, 0), stalls: stalls}
		left := departures(t, pacerOn(clock, ceiling), clock, len(stalls))
		if got := mostInOneSecond(left); got > int(math.Floor(ceiling)) {
			t.Errorf("ceiling %g/s: %d calls went within one second", ceiling, got)
		}
	}
}

func TestPacerReleasesNoBurstAfterAStall(t *testing.T) {
	clock := &stallingClock{t: time.Unix(1e9, 0)}
	p := pacerOn(clock, 50)
	interval := p.interval
	clock.stalls = []time.Duration{0, 5 * interval}

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
	const calls = 50
	clock := &stallingClock{t: time.Unix(1e9, 0)}
	p := pacerOn(clock, 50)
	late := p.interval / 4
	for range calls {
		clock.stalls = append(clock.stalls, late) // every sleep overshoots, as timers on a busy machine do
	}

	left := departures(t, p, clock, calls)
	// The lateness of one wake-up is not added to the next: 50 calls take
	// 48 intervals (two go at once), plus one lateness, not 49 of them.
	if got, want := left[calls-1].Sub(left[0]), (calls-2)*p.interval+late; got != want {
		t.Errorf("%d calls took %v, want %v", calls, got, want)
	}
}

func TestPacerPacesConcurrentCallers(t *testing.T) {
	const callers = 20
	p := NewPacer(500)
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
			if err := p.Wait(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// The first reading is the first call going, the last the last call.
	if total, least := left[len(left)-1].Sub(left[0]), (callers-2)*p.interval; total < least {
		t.Errorf("%d callers went within %v, want at least %v", callers, total, least)
	}
}

func TestPacerLetsNoCallGoForAnEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		// A fresh pacer: the turn is free and the call is due, so only
		// the context can stop it.
		if err := NewPacer(50).Wait(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("wait with an ended context: %v, want context.Canceled", err)
		}
	}
}

func TestPacerQueuedWaiterThatGivesUpReturns(t *testing.T) {
	p := NewPacer(50)
	sleeping := make(chan struct{})
	p.sleep = func(ctx context.Context, d time.Duration) error {
		close(sleeping)
		<-ctx.Done() // a holder that sleeps until its context ends
		return ctx.Err()
	}
	// The first two calls may go at once; the third holds the turn, asleep.
	for range 2 {
		if err := p.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	holding, release := context.WithCancel(context.Background())
	held := make(chan error)
	go func() { held <- p.Wait(holding) }()
	<-sleeping

	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- p.Wait(ctx) }() // queued behind the holder
	cancel()
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("queued wait after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second): // a bound on failure, not a wait for success
		t.Error("a queued waiter whose context ended is still waiting for the turn")
	}
	release()
	if err := <-held; !errors.Is(err, context.Canceled) {
		t.Errorf("holder's wait after its context ended: %v, want context.Canceled", err)
	}
}
