package publisher

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// jetStream starts an embedded JetStream server and connects to it.
func jetStream(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestStoreNeverReplacesNewerToken: a leader deposed while it fetched
// still holds the old revision; its write must not replace the token the new
// leader stored since, which WeChat issued later.
func TestStoreNeverReplacesNewerToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := jetStream(t)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Refresher{}
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
	leader := newTestLeader(t, ctx, fakewechat.Config{}, Config{})
	b, a := leader.bucket, leader.r.credential("wx1")
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
		a.pending = &rec
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
	a.rev, a.rec = base, &replaced
	a.mu.Unlock()

	// Another leader stored a newer token, which this replica has not seen.
	leave(kv.NewCredential("wx1", "deposed-leaders", 2*time.Hour, now.Add(-time.Minute)))
	newer := put(kv.NewCredential("wx1", "new-leaders", 2*time.Hour, now), base)
	if leader.r.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev != newer || value != "new-leaders" {
		t.Fatalf("the bucket holds %q at revision %d, want the newer token at %d", value, rev, newer)
	}

	// A leftover fetched after what the bucket holds goes in.
	leave(kv.NewCredential("wx1", "fetched-last", 2*time.Hour, now.Add(time.Second)))
	if leader.r.storeLeftover(ctx, b, a) {
		t.Fatal("the leftover is still left")
	}
	if rev, value := stored(); rev <= newer || value != "fetched-last" {
		t.Fatalf("the bucket holds %q at revision %d, want the leftover after %d", value, rev, newer)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending != nil {
		t.Error("the stored leftover is still pending")
	}
}
