package loop

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// TestATokenIsFetchedAtTheTimeItsFetchIsCounted: the ledger tells a later
// call that ends a token from the token's own fetch by their seconds, so
// a token's fetched_at is the time its fetch was counted at, however long
// the count's round trip to the bucket took. Here every reading of the
// clock is a second after the last, so any reading taken after the count
// falls in another second: on a busy machine a count's round trip
// crossing a second did that, and the next fetch, alone in its second,
// was taken for another party's (TestTokensTheRefresherEndedAreNotBlamedOnOthers
// failed so under load).
func TestATokenIsFetchedAtTheTimeItsFetchIsCounted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	start := time.Now().Truncate(time.Second)
	var readings atomic.Int64
	c := New(testConfig(r.nc, r.js, func(cfg *Config) {
		cfg.Now = func() time.Time { return start.Add(time.Duration(readings.Add(1)) * time.Second) }
	}))
	c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: &enderKind{testKind: newTestKind(t, r.url, "wx1", "a-secret-of-some-length")}}})
	b, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	values := watchKey(t, ctx, b, "wx1")
	rep := &replica{c: c, b: b, stop: func() {}}
	rep.lead(t, ctx)
	first := nextValue(t, ctx, values)
	rep.stop() // nothing more is counted

	l := r.ledger(ctx, b)
	if first.rec == nil {
		t.Fatal("the first value stored is no token")
	}
	if !first.rec.FetchedAt.Truncate(time.Second).Equal(l.LastEnding.Truncate(time.Second)) || l.LastEndingCalls != 1 {
		t.Errorf("the token says it was fetched at %s, the ledger counted its fetch at %s (%d ending calls in that second): not one time",
			first.rec.FetchedAt.Format(time.RFC3339Nano), l.LastEnding.Format(time.RFC3339Nano), l.LastEndingCalls)
	}
}
