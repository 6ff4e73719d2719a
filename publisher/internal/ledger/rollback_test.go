package ledger

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

const app = "wx1234567890abcdef"

// TestARolledBackLedgerGetsBackWhatTheBookSaw: a ledger restored from an
// earlier copy, then deleted, gets back at the book's next count (and
// read) what the book saw it count: the day's calls and the last call that
// ends the token, though the book keeps no decoded ledger.
func TestARolledBackLedgerGetsBackWhatTheBookSaw(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := tokenBucket(t)
	book := New()
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	if err := book.Count(ctx, b, app, "token", at, true); err != nil {
		t.Fatal(err)
	}
	snapshot, err := b.Get(ctx, kv.LedgerKey(app))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if err := book.Count(ctx, b, app, "token", at.Add(time.Duration(i)*time.Minute), true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Put(ctx, kv.LedgerKey(app), snapshot.Value()); err != nil { // the restore
		t.Fatal(err)
	}
	l, ok, err := book.Read(ctx, b, app)
	if err != nil || !ok || l.Calls["token"] != 3 || !l.LastEnding.Equal(at.Add(2*time.Minute)) {
		t.Fatalf("read after the restore: %d calls, last ending %s (found %v, %v); want 3 and %s", l.Calls["token"], l.LastEnding, ok, err, at.Add(2*time.Minute))
	}
	if err := book.Count(ctx, b, app, "token", at.Add(3*time.Minute), false); err != nil {
		t.Fatal(err)
	}
	if got := stored(ctx, t, b, app); got.Calls["token"] != 4 || !got.LastEnding.Equal(at.Add(2*time.Minute)) {
		t.Fatalf("written after the restore: %d calls, last ending %s; want 4 and %s", got.Calls["token"], got.LastEnding, at.Add(2*time.Minute))
	}

	if err := b.Delete(ctx, kv.LedgerKey(app)); err != nil { // written again from scratch
		t.Fatal(err)
	}
	if err := book.Count(ctx, b, app, "token", at.Add(4*time.Minute), false); err != nil {
		t.Fatal(err)
	}
	if got := stored(ctx, t, b, app); got.Calls["token"] != 5 || got.MonthCalls["token"] != 5 || !got.Since.Equal(at) {
		t.Fatalf("written after a delete: %d calls today, %d this month, since %s; want 5, 5, %s", got.Calls["token"], got.MonthCalls["token"], got.Since, at)
	}
}

// TestARaisedLedgerTooLargeToStoreIsKeptForTheNextChange: a ledger whose
// rollback the book adds back to can grow past what a value of the bucket
// holds (another writer's many readings, beside the book's rescue marks):
// the book keeps it whole, refuses a change that leaves it too large, and
// writes one that shrinks it, with the rescue added back.
func TestARaisedLedgerTooLargeToStoreIsKeptForTheNextChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := tokenBucket(t)
	book := New()
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	rescued := map[string]string{}
	for i := range 200 {
		rescued[fmt.Sprintf("/cgi-bin/some/long/api/path/%03d", i)] = "2026-12-07"
	}
	if err := book.Update(ctx, b, app, func(l *kv.Ledger) bool {
		l.Count("token", at, true)
		l.Rescue = &kv.Rescue{At: at, Path: "/cgi-bin/token", Outcome: "rescued", Count: 1, Rescued: rescued}
		return true
	}); err != nil {
		t.Fatal(err)
	}

	other := kv.Ledger{AppID: app, Quota: map[string]kv.QuotaReading{}} // another writer's, without the rescue
	other.Count("token", at, true)
	for i := range 90 {
		other.Quota[fmt.Sprintf("/cgi-bin/another/api/path/%03d", i)] = kv.QuotaReading{At: at, DailyLimit: 100000, Used: 12345, Remain: 87655, Ours: 12000, Others: 345}
	}
	data, err := kv.EncodeLedger(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, kv.LedgerKey(app), data); err != nil {
		t.Fatal(err)
	}

	l, ok, err := book.Read(ctx, b, app)
	if err != nil || !ok || l.Rescue == nil || len(l.Rescue.Rescued) != 200 || len(l.Quota) != 90 {
		t.Fatalf("read: found %v, %v; rescue %v, %d readings", ok, err, l.Rescue != nil, len(l.Quota))
	}
	if _, err := kv.EncodeLedger(l); !errors.Is(err, kv.ErrInvalidRecord) {
		t.Fatalf("the raised ledger encodes (%v): the test does not reach a ledger too large", err)
	}
	err = book.Count(ctx, b, app, "token", at.Add(time.Minute), false)
	if !errors.Is(err, kv.ErrInvalidRecord) {
		t.Fatalf("a count that leaves the ledger too large: %v, want kv.ErrInvalidRecord", err)
	}
	if err := book.Update(ctx, b, app, func(l *kv.Ledger) bool {
		l.Quota = nil
		l.Count("token", at.Add(time.Minute), false)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	got := stored(ctx, t, b, app)
	if got.Rescue == nil || len(got.Rescue.Rescued) != 200 || len(got.Quota) != 0 || got.Calls["token"] != 2 {
		t.Fatalf("written: rescue %v, %d readings, %d calls; want the rescue, no readings, 2 calls", got.Rescue != nil, len(got.Quota), got.Calls["token"])
	}
}

// stored is appid's ledger as b holds it.
func stored(ctx context.Context, t *testing.T, b jetstream.KeyValue, appid string) kv.Ledger {
	t.Helper()
	e, err := b.Get(ctx, kv.LedgerKey(appid))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.DecodeLedger(appid, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// gets counts the reads of a real bucket.
type gets struct {
	jetstream.KeyValue
	n int
}

func (g *gets) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	g.n++
	return g.KeyValue.Get(ctx, key)
}

// TestACountIsOneRoundTrip: the book reads an app's ledger once, then
// counts each call with one write and no read, though it keeps the ledger
// as JSON.
func TestACountIsOneRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := &gets{KeyValue: tokenBucket(t)}
	book := New()
	for range 5 {
		if err := book.Count(ctx, b, app, "token", time.Now(), true); err != nil {
			t.Fatal(err)
		}
	}
	if b.n != 1 {
		t.Errorf("5 counts read the bucket %d times, want once (the first)", b.n)
	}
	if got := stored(ctx, t, b, app); got.Calls["token"] != 5 {
		t.Errorf("counted %d, want 5", got.Calls["token"])
	}
}
