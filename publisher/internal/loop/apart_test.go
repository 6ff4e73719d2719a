package loop

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// TestLeaderCallGoesOnlyDuringATermCountedFirstAndWithinItsBudget: a call
// apart from the rotations is refused before the replica leads; during its
// term it is counted in the app's ledger before it is made; a budget that
// allow finds spent counts nothing and makes no call; once the term ends
// no call goes.
func TestLeaderCallGoesOnlyDuringATermCountedFirstAndWithinItsBudget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	rep := r.open(ctx, "a")
	calls := 0
	call := func(context.Context) error { calls++; return nil }
	if err := rep.c.LeaderCall(ctx, "wx1", "quota_get", nil, call); !errors.Is(err, ErrEnding) || calls != 0 {
		t.Fatalf("before the term: %v, %d calls", err, calls)
	}
	values := watchKey(t, ctx, rep.b, "wx1")
	rep.lead(t, ctx)
	nextValue(t, ctx, values) // the term is under way

	countedFirst := false
	err := rep.c.LeaderCall(ctx, "wx1", "quota_get", nil, func(context.Context) error {
		countedFirst = r.ledger(ctx, rep.b).Calls["quota_get"] == 1
		return nil
	})
	if err != nil || !countedFirst {
		t.Fatalf("during the term: %v; counted before the call: %v", err, countedFirst)
	}
	spent := errors.New("budget spent")
	budget := func(l kv.Ledger) error {
		if l.MonthCalls["clear_quota"] >= 1 {
			return spent
		}
		return nil
	}
	if err := rep.c.LeaderCall(ctx, "wx1", "clear_quota", budget, call); err != nil || calls != 1 {
		t.Fatalf("the budget's first call: %v, %d calls", err, calls)
	}
	if err := rep.c.LeaderCall(ctx, "wx1", "clear_quota", budget, call); !errors.Is(err, spent) || calls != 1 {
		t.Fatalf("past the budget: %v, %d calls", err, calls)
	}
	if n := r.ledger(ctx, rep.b).MonthCalls["clear_quota"]; n != 1 {
		t.Errorf("a refused call was counted: %d in the month", n)
	}
	rep.stop()
	if err := rep.c.LeaderCall(ctx, "wx1", "quota_get", nil, call); !errors.Is(err, ErrEnding) || calls != 1 {
		t.Fatalf("after the term: %v, %d calls", err, calls)
	}
}

// TestCallsMadeBeforeTheBucketIsOpenAreCountedWhenItOpens: a replica's
// first probes go before the token bucket is open; they are counted in
// the app's ledger as the bucket opens, not with the app's next count (a
// probe an hour away), so that the leader's reading of WeChat's count does
// not take them for another party's meanwhile.
func TestCallsMadeBeforeTheBucketIsOpenAreCountedWhenItOpens(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	c := New(testConfig(r.nc, r.js, nil))
	if err := c.CountApart(ctx, "wx1", "stable_token"); err != nil {
		t.Fatal(err)
	}
	b, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := r.ledger(ctx, b).Calls["stable_token"]; n != 1 {
		t.Errorf("the probe made before the bucket was open: %d counted once it opened, want 1", n)
	}
}
