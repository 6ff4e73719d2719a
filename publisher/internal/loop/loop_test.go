package loop

import (
	"slices"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// TestReplaceKeepsTheStateOfWhatStays: a reload's Replace keeps each
// credential of the same key, kind and parent with what the loop knows of
// it (the value held, its revision, a failure's pause), whether or not it
// takes a new source; a credential whose kind or parent changed is a new
// one; and what Replace did is reported.
func TestReplaceKeepsTheStateOfWhatStays(t *testing.T) {
	c := New(testConfig(nil, nil, nil))
	src := newTestKind(t, "http://127.0.0.1:1", "wx1", "s")
	ch := c.Replace([]Desc{
		{Key: "wx1", Kind: kv.KindToken, Source: src},
		{Key: "wx1:jsapi", Kind: "jsapi", Parent: "wx1", Source: src},
		{Key: "wx2", Kind: kv.KindToken, Source: src},
	})
	if !slices.Equal(ch.Added, []string{"wx1", "wx1:jsapi", "wx2"}) || len(ch.Removed)+len(ch.Renewed) != 0 {
		t.Fatalf("first Replace: %+v", ch)
	}
	wx1, jsapi := c.credential("wx1"), c.credential("wx1:jsapi")
	held := kv.NewCredential("wx1", "held-token", 2*time.Hour, time.Now())
	wx1.setRecord(7, &held, c.windowOf(src))
	until := time.Now().Add(time.Hour)
	jsapi.pause(until, errPanicked)

	renewed := newTestKind(t, "http://127.0.0.1:1", "wx1", "another secret")
	ch = c.Replace([]Desc{
		{Key: "wx1", Kind: kv.KindToken, Source: renewed, Renewed: true},
		{Key: "wx1:jsapi", Kind: "jsapi", Parent: "wx1", Source: src},
		{Key: "wx2", Kind: "jsapi", Parent: "wx1", Source: src}, // another kind now
	})
	if !slices.Equal(ch.Renewed, []string{"wx1"}) || !slices.Equal(ch.Added, []string{"wx2"}) || len(ch.Removed) != 0 {
		t.Errorf("second Replace: %+v; want wx1 renewed, wx2 made again", ch)
	}
	if c.credential("wx1") != wx1 || c.credential("wx1:jsapi") != jsapi {
		t.Fatal("a credential that stayed was made again")
	}
	if rec := wx1.record(); rec == nil || rec.Value != "held-token" || wx1.revision() != 7 {
		t.Errorf("the renewed credential holds %v at revision %d, want the value held before", rec, wx1.revision())
	}
	if wx1.id().src != Source(renewed) {
		t.Error("the renewed credential did not take its new source")
	}
	if _, _, retryAt, lastErr := jsapi.begin(time.Now()); !retryAt.Equal(until) || lastErr == nil {
		t.Errorf("the credential that stayed waits until %v after %v, want its pause kept", retryAt, lastErr)
	}

	ch = c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: renewed}})
	if !slices.Equal(ch.Removed, []string{"wx1:jsapi", "wx2"}) || c.Has("wx2") || c.Len() != 1 {
		t.Errorf("third Replace: %+v, %d credentials; want the tickets removed", ch, c.Len())
	}
	if !jsapi.st.removed { // no goroutine runs: read without its lock
		t.Error("a removed credential is not marked removed")
	}
}
