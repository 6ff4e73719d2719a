package loop

import (
	"slices"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// parentHolding is the parent credential wx1 holding a token of 7200 s
// fetched at fetchedAt, replaced in its last 10 minutes.
func parentHolding(fetchedAt time.Time) *credential {
	p := &credential{key: "wx1", kind: kv.KindToken}
	p.ident.Store(&identity{})
	rec := kv.NewCredential("wx1", "the-token", 7200*time.Second, fetchedAt)
	p.mu.Lock()
	p.setRecord(1, &rec, func(time.Duration) time.Duration { return 10 * time.Minute })
	p.mu.Unlock()
	return p
}

// TestAChildIsNotGivenATokenAboutToBeReplaced: a child asking for its
// parent's token gets it while it is not due; once it is in its window,
// still valid but its rotation not started (its timer late, on a busy
// machine), the child starts the parent's rotation and waits for it,
// rather than go out with a token that may die before its call reaches
// WeChat (TestTicketsAcrossTokenRotationsNeverUseADeadToken saw hundreds
// of ticket calls with a dead token under load).
func TestAChildIsNotGivenATokenAboutToBeReplaced(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		fetched time.Time
		flight  bool
	}{
		{"fresh", now.Add(-time.Minute), false},
		{"in its window, 200 s left", now.Add(-7000 * time.Second), true},
		{"dead", now.Add(-7300 * time.Second), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := parentHolding(tc.fetched)
			var reasons []string
			rec, _, f := p.parentToken(now, func(f *flight, base outcome, reason string) bool {
				reasons = append(reasons, reason)
				return true
			})
			switch {
			case tc.flight && (f == nil || !slices.Equal(reasons, []string{kv.ReasonScheduled})):
				t.Errorf("no scheduled rotation of the parent started (started %v): the child would go with the token it has", reasons)
			case !tc.flight && (f != nil || rec == nil || rec.Value != "the-token"):
				t.Errorf("the fresh token was not handed out at once: record %v, flight %v", rec, f)
			}
		})
	}
}
