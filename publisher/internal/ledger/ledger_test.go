package ledger

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

func tokenBucket(tb testing.TB) jetstream.KeyValue {
	tb.Helper()
	_, js := natstest.JetStream(tb)
	b, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: kv.DefaultBucket})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestReplicasCountEveryCall: two replicas' books count the same app's
// calls at once; the ledger holds every one of them (compare-and-swap, and
// a lost race counted again), and the last call that ends the token.
func TestReplicasCountEveryCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b := tokenBucket(t)
	const perReplica = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*perReplica)
	for range 2 {
		book := New()
		wg.Go(func() {
			for i := range perReplica {
				errs <- book.Count(ctx, b, "wx1234567890abcdef", "token", time.Now(), i == perReplica-1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	l, ok, err := New().Read(ctx, b, "wx1234567890abcdef")
	if err != nil || !ok {
		t.Fatalf("read: %v (found %v)", err, ok)
	}
	if l.Calls["token"] != 2*perReplica || l.MonthCalls["token"] != 2*perReplica {
		t.Errorf("counted %d today, %d this month; want %d", l.Calls["token"], l.MonthCalls["token"], 2*perReplica)
	}
	if l.LastEnding.IsZero() || l.Since.IsZero() {
		t.Errorf("since %s, last ending %s", l.Since, l.LastEnding)
	}
}

// TestAnUndecodableLedgerStartsAgain: a ledger nobody can read is written
// over, counting from then on (Since), not a reason to stop calling WeChat.
func TestAnUndecodableLedgerStartsAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := tokenBucket(t)
	if _, err := b.Put(ctx, kv.LedgerKey("wx1234567890abcdef"), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := New().Count(ctx, b, "wx1234567890abcdef", "token", now, true); err != nil {
		t.Fatal(err)
	}
	l, ok, err := New().Read(ctx, b, "wx1234567890abcdef")
	if err != nil || !ok || l.Calls["token"] != 1 || !l.Since.Equal(now.UTC()) {
		t.Fatalf("ledger %+v (found %v): %v", l, ok, err)
	}
}

// BenchmarkCount is what counting adds to each call to WeChat (so to a
// rotation): one compare-and-swap write to the bucket, on an embedded
// server. go test -run - -bench Count ./publisher/internal/ledger/
func BenchmarkCount(b *testing.B) {
	bucket := tokenBucket(b)
	book := New()
	ctx := context.Background()
	for b.Loop() {
		if err := book.Count(ctx, bucket, "wx1234567890abcdef", "token", time.Now(), true); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCallsAddsEveryNameOfAPath(t *testing.T) {
	calls := map[string]int{"stable_token": 3, "stable_token_force": 1, "jsapi_ticket": 2, "wx_card_ticket": 1, "wecom_token": 5}
	for path, want := range map[string]int{"/cgi-bin/stable_token": 4, "/cgi-bin/ticket/getticket": 3, "/cgi-bin/token": 0} {
		if got := Calls(calls, path); got != want {
			t.Errorf("Calls(%s) = %d, want %d", path, got, want)
		}
	}
	if Path("wecom_token") != "" {
		t.Errorf("WeCom's token has a path quota/get is asked of: %q", Path("wecom_token"))
	}
}
