// Package benchkit holds the bodies of wxtoken's Go benchmarks, so that
// `go test -bench` and the benchmark program (test/bench) measure exactly
// the same code. Each sets up real parts: an embedded NATS server, the fake
// WeChat, a refresher, subscribers on their own connections.
package benchkit

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// App is the app the benchmarks follow.
const App = "wxbench00000000001"

// system is a NATS server, a fake WeChat and a leading refresher for App.
type system struct {
	url  string
	fake *fakewechat.Server
}

func start(b *testing.B, wechat fakewechat.Config, minForce time.Duration) system {
	b.Helper()
	srv := testenv.NATS(b)
	fake, url := testenv.WeChat(b, wechat)
	nc := testenv.Connect(b, srv.ClientURL())
	testenv.Refresher(b, nc, publisher.Config{
		Apps: testenv.Apps(fake, App), UpstreamURL: url, MinForceInterval: minForce,
		Logger: slog.New(slog.DiscardHandler),
	})
	return system{url: srv.ClientURL(), fake: fake}
}

func follow(b *testing.B, url string) *subscriber.Subscriber {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := subscriber.New(ctx, testenv.Connect(b, url), App)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sub.Close() })
	return sub
}

// sink keeps the compiler from optimising reads away.
var sink atomic.Pointer[string]

// TokenRead measures subscriber.Token from all Ps at once: the read a
// service makes for every WeChat call.
func TokenRead(b *testing.B) {
	sys := start(b, fakewechat.Config{}, 0)
	sub := follow(b, sys.url)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// tok stays on this goroutine's stack, as in a service: taking
		// its address for the sink would move it to the heap, next to the
		// other goroutine's, and measure false sharing instead.
		var tok subscriber.Token
		for pb.Next() {
			tok = sub.Token()
		}
		value := tok.Value
		sink.Store(&value)
	})
}

// KVGetPerCall measures what many SDKs do instead: read the token from a
// shared store (here the same bucket, over the same NATS) and parse it, for
// every call.
func KVGetPerCall(b *testing.B) {
	sys := start(b, fakewechat.Config{}, 0)
	follow(b, sys.url) // the token exists
	js, err := jetstream.New(testenv.Connect(b, sys.url))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	bucket, err := kv.Bind(ctx, js, "")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var rec kv.Credential
		for pb.Next() {
			e, err := bucket.Get(ctx, App)
			if err != nil {
				b.Error(err)
				return
			}
			if rec, err = kv.DecodeCredential(App, e.Value()); err != nil {
				b.Error(err)
				return
			}
		}
		value := rec.Value
		sink.Store(&value)
	})
}

// Storm makes n subscribers, each on its own connection, report the same
// rejected token at once, as after WeChat invalidated it. Per storm it
// reports the upstream calls made (the goal is exactly one) and the time
// until every subscriber held the new token (p99 and max over subscribers
// and storms).
func Storm(b *testing.B, n int) {
	sys := start(b, fakewechat.Config{Overlap: -1}, time.Nanosecond)
	subs := make([]*subscriber.Subscriber, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range subs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			subs[i] = follow(b, sys.url)
		})
	}
	wg.Wait()

	var held []time.Duration
	calls := 0
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		stale := subs[0].Token().Revision
		sys.fake.Issue(App) // WeChat invalidates the token
		before := sys.fake.Calls(App)
		release := make(chan struct{})
		took := make([]time.Duration, n)
		for i, s := range subs {
			wg.Go(func() {
				<-release
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				tok, err := s.Refresh(ctx, stale)
				if err != nil || tok.Revision <= stale {
					b.Errorf("subscriber %d: revision %d, %v", i, tok.Revision, err)
				}
				took[i] = time.Since(start)
			})
		}
		b.StartTimer()
		close(release)
		wg.Wait()
		b.StopTimer()
		calls += sys.fake.Calls(App) - before
		held = append(held, took...)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(held)
	b.ReportMetric(float64(calls)/float64(b.N), "upstream-calls/op")
	b.ReportMetric(ms(held[min(len(held)-1, len(held)*99/100)]), "p99-ms")
	b.ReportMetric(ms(held[len(held)-1]), "max-ms")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
