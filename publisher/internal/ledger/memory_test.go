package ledger

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// BenchmarkBookMemory is the live heap a replica's book holds per app, for
// 10,000 apps with a day's ledger each (a stable_token app's fetches and
// probes, a jsapi_ticket's, the poller's quota/get, two readings): the
// heap after a GC with the book, less the heap after a GC without it, so
// that the server's copy of the bucket (in memory) is not counted.
//
//	go test -run - -bench BookMemory -benchtime 1x ./publisher/internal/ledger/
func BenchmarkBookMemory(b *testing.B) {
	const apps = 10_000
	ctx := context.Background()
	_, js := natstest.JetStream(b)
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.MemoryStorage})
	if err != nil {
		b.Fatal(err)
	}
	day := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	for b.Loop() {
		book := New()
		for i := range apps {
			appid := fmt.Sprintf("wx%016x", i)
			if err := book.Update(ctx, bucket, appid, aDay(day)); err != nil {
				b.Fatal(err)
			}
		}
		with := liveHeap()
		runtime.KeepAlive(book)
		book = nil
		b.ReportMetric(float64(int64(with)-int64(liveHeap()))/apps, "B/app")
	}
}

// aDay fills a ledger as a day of an app with a JS-SDK ticket leaves it:
// 12 token fetches and 12 tickets, 24 probes of the secret, 24 quota/get,
// the readings of its two paths.
func aDay(start time.Time) func(*kv.Ledger) bool {
	return func(l *kv.Ledger) bool {
		for h := range 24 {
			at := start.Add(time.Duration(h) * time.Hour)
			if h%2 == 0 {
				l.Count("token", at, true)
				l.Count("jsapi_ticket", at, false)
			}
			l.Count("stable_token", at.Add(time.Minute), false)
			l.Count("quota_get", at.Add(2*time.Minute), false)
		}
		at := start.Add(23 * time.Hour).UTC()
		l.Quota = map[string]kv.QuotaReading{
			"/cgi-bin/token":            {At: at, DailyLimit: 2000, Used: 12, Remain: 1988, Ours: 12},
			"/cgi-bin/ticket/getticket": {At: at, DailyLimit: 2000, Used: 12, Remain: 1988, Ours: 12},
		}
		return true
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
