package upstream

import (
	"testing"
	"time"
)

func TestUntilQuotaReset(t *testing.T) {
	for _, tc := range []struct{ now, reset string }{
		{"2026-11-21T10:00:00Z", "2026-11-21T16:00:00Z"}, // 18:00 in China: midnight is 6h on
		{"2026-11-21T15:59:59Z", "2026-11-21T16:00:00Z"},
		{"2026-11-21T16:00:00Z", "2026-11-22T16:00:00Z"}, // exactly midnight: the next one
		{"2026-12-31T20:00:00Z", "2027-01-01T16:00:00Z"},
	} {
		now, _ := time.Parse(time.RFC3339, tc.now)
		reset, _ := time.Parse(time.RFC3339, tc.reset)
		if got := now.Add(UntilQuotaReset(now)); !got.Equal(reset) {
			t.Errorf("reset after %s = %s, want %s", tc.now, got.UTC(), tc.reset)
		}
	}
}
