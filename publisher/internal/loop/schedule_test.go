package loop

import (
	"strings"
	"testing"
	"time"
)

// anyTime is a source whose values may be replaced any time before they
// expire.
type anyTime struct{ *testKind }

func (anyTime) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

// TestWindowIsCutForShortLifetimes: a value is replaced RefreshBefore
// before it expires, or at half its lifetime for a short-lived one.
func TestWindowIsCutForShortLifetimes(t *testing.T) {
	src := anyTime{&testKind{}}
	for lifetime, want := range map[time.Duration]time.Duration{
		7200 * time.Second: 10 * time.Minute,
		20 * time.Minute:   10 * time.Minute,
		90 * time.Second:   45 * time.Second,
		30 * time.Second:   15 * time.Second,
	} {
		if got := Window(src, 10*time.Minute, lifetime); got != want {
			t.Errorf("window(%s) = %s, want %s", lifetime, got, want)
		}
	}
}

func TestSpreadOfIsStableAndBounded(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := range 100 {
		appid := "wx" + strings.Repeat("0", 14) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		d := spreadOf(appid, 1, 2*time.Minute)
		if d < 0 || d >= 2*time.Minute || d != spreadOf(appid, 1, 2*time.Minute) {
			t.Fatalf("spreadOf(%s) = %s", appid, d)
		}
		seen[d.Truncate(time.Second)] = true
	}
	if len(seen) < 50 {
		t.Errorf("100 apps spread over only %d distinct seconds", len(seen))
	}
	if spreadOf("wx1", 1, 0) != 0 {
		t.Error("spread with no span")
	}
}

func TestRetryDelayGrowsToItsCap(t *testing.T) {
	for _, tc := range []struct {
		failures  int
		least, at time.Duration // the pause is within [least, at]
	}{
		{1, 500 * time.Millisecond, time.Second},
		{2, time.Second, 2 * time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{6, 16 * time.Second, 32 * time.Second},
		{7, 30 * time.Second, time.Minute}, // 64s, capped
		{40, 30 * time.Second, time.Minute},
	} {
		for range 100 {
			if d := retryDelay(tc.failures, time.Second, time.Minute); d < tc.least || d > tc.at {
				t.Fatalf("retryDelay(%d) = %s, want within [%s, %s]", tc.failures, d, tc.least, tc.at)
			}
		}
	}
}
