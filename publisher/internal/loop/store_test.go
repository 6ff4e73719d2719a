package loop

import (
	"context"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestStoreNeverReplacesNewerToken: a leader deposed while it fetched
// still holds the old revision; its write must not replace the token the new
// leader stored since, which WeChat issued later.
func TestStoreNeverReplacesNewerToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.JetStream(t)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Credentials{}
	now := time.Now()
	put := func(rec kv.Credential, rev uint64) uint64 {
		data, _ := kv.EncodeCredential(rec)
		rev, err := casPut(ctx, b, "wx1", data, rev)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	base := put(kv.NewCredential("wx1", "first", 2*time.Hour, now.Add(-time.Hour)), 0)
	newer := kv.NewCredential("wx1", "new-leaders", 2*time.Hour, now)
	newRev := put(newer, base)

	deposed := kv.NewCredential("wx1", "deposed-leaders", 2*time.Hour, now.Add(-5*time.Second))
	deposedData, _ := kv.EncodeCredential(deposed)
	rev, stored, ours, err := r.store(ctx, b, "wx1", deposed, deposedData, base)
	if err != nil {
		t.Fatal(err)
	}
	if ours || rev != newRev || stored.Value != "new-leaders" {
		t.Fatalf("store over a newer token: ours %v rev %d token %q", ours, rev, stored.Value)
	}
	if e, _ := b.Get(ctx, "wx1"); e.Revision() != newRev {
		t.Fatalf("the bucket moved to revision %d", e.Revision())
	}

	// Garbage is no token: a fresh token is written over it.
	garbage, err := b.Put(ctx, "wx1", []byte("garbage"))
	if err != nil {
		t.Fatal(err)
	}
	fresh := kv.NewCredential("wx1", "fresh", 2*time.Hour, now.Add(time.Second))
	freshData, _ := kv.EncodeCredential(fresh)
	rev, stored, ours, err = r.store(ctx, b, "wx1", fresh, freshData, newRev)
	if err != nil || !ours || rev <= garbage || stored.Value != "fresh" {
		t.Fatalf("store over garbage: ours %v rev %d token %q err %v", ours, rev, stored.Value, err)
	}
}

// TestLeftoverTokenGoesOnlyOverAnOlderOne: a token a deposed leader could
// not store is written between terms over the one it replaced, but never
// over a newer one another leader stored meanwhile, seen or not.
func TestLeftoverTokenGoesOnlyOverAnOlderOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, nil)
	b, a := leader.bucket, leader.c.credential("wx1")
	now := time.Now()
	put := func(rec kv.Credential, rev uint64) uint64 {
		data, _ := kv.EncodeCredential(rec)
		rev, err := casPut(ctx, b, "wx1", data, rev)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	leave := func(rec kv.Credential) {
		a.mu.Lock()
		a.st.pending = &rec
		a.mu.Unlock()
	}
	stored := func() (uint64, string) {
		e, err := b.Get(ctx, "wx1")
		if err != nil {
			t.Fatal(err)
		}
		rec, err := kv.DecodeCredential("wx1", e.Value())
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision(), rec.Value
	}
	replaced := kv.NewCredential("wx1", "replaced", 2*time.Hour, now.Add(-time.Hour))
	base := put(replaced, 0)
	a.mu.Lock()
	a.st.rev, a.st.rec = base, &replaced
	a.mu.Unlock()

	// Another leader stored a newer token, which this replica has not seen.
	leave(kv.NewCredential("wx1", "deposed-leaders", 2*time.Hour, now.Add(-time.Minute)))
	newer := put(kv.NewCredential("wx1", "new-leaders", 2*time.Hour, now), base)
	if leader.c.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev != newer || value != "new-leaders" {
		t.Fatalf("the bucket holds %q at revision %d, want the newer token at %d", value, rev, newer)
	}

	// A leftover fetched after what the bucket holds goes in.
	leave(kv.NewCredential("wx1", "fetched-last", 2*time.Hour, now.Add(time.Second)))
	if leader.c.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev <= newer || value != "fetched-last" {
		t.Fatalf("the bucket holds %q at revision %d, want the leftover after %d", value, rev, newer)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.pending != nil {
		t.Error("the stored leftover is still pending")
	}
}

// TestLeftoverWaitsForWhatItsSourceSavesFirst: between terms, a value left
// in memory is stored only after what its source must store first (an
// authorizer's refresh token WeChat returned with its token), as in a
// rotation: never a value whose refresh token could be lost.
func TestLeftoverWaitsForWhatItsSourceSavesFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, nil)
	b, a := leader.bucket, leader.c.credential("wx1")
	kind := a.id().src.(*testKind)
	token := kv.NewCredential("wx1", "left-in-memory", 2*time.Hour, time.Now())
	a.keep(token, false)

	kind.unsaved.Store(true)
	if !leader.c.storeLeftover(ctx, b, a) {
		t.Fatal("nothing left, though the source could not store what it holds")
	}
	if _, err := b.Get(ctx, "wx1"); err == nil {
		t.Fatal("the value was stored before what its source holds")
	}

	kind.unsaved.Store(false)
	if leader.c.storeLeftover(ctx, b, a) {
		t.Fatal("still left once the source could store what it holds")
	}
	e, err := b.Get(ctx, "wx1")
	if err != nil {
		t.Fatalf("the value was not stored: %v", err)
	}
	if got, _ := kv.DecodeCredential("wx1", e.Value()); got.Value != "left-in-memory" {
		t.Errorf("the bucket holds %q, want the value left in memory", got.Value)
	}
}
