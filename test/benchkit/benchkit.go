// Package benchkit holds the bodies of wxtoken's Go benchmarks, so that
// `go test -bench` and the benchmark program (test/bench) measure exactly
// the same code. Each sets up real parts: an embedded NATS server, the fake
// WeChat, a refresher, subscribers on their own connections.
package benchkit

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
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

// SetKeys is how many keys the Set benchmarks follow: a platform's 10,000
// authorizers.
const SetKeys = 10000

// SetKey is the i-th key of the Set benchmarks.
func SetKey(i int) string { return fmt.Sprintf("wxset%013d", i) }

// FillBucket creates the token bucket on the server at url, as a refresher
// does (it says its values are published), and stores a valid token under
// each of keys: what a Set reads at start.
func FillBucket(tb testing.TB, url string, keys []string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(testenv.Connect(tb, url))
	if err != nil {
		tb.Fatal(err)
	}
	if err := Fill(ctx, js, keys); err != nil {
		tb.Fatal(err)
	}
}

// Fill is FillBucket on a JetStream context of the caller's.
func Fill(ctx context.Context, js jetstream.JetStream, keys []string) error {
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		return err
	}
	// Many writes in flight at once: 10,000 one after another take seconds.
	var wg sync.WaitGroup
	errs := make(chan error, len(keys))
	sem := make(chan struct{}, 64)
	for _, key := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			// A token as long as WeChat's (about 160 characters).
			data, err := kv.EncodeCredential(kv.NewCredential(key, strings.Repeat("T", 150)+key, 2*time.Hour, time.Now()))
			if err == nil {
				_, err = b.Put(ctx, key, data)
			}
			if err != nil {
				errs <- fmt.Errorf("%s: %w", key, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// SetTokenRead measures subscriber.Set.Token from all Ps at once, with the
// Set following SetKeys keys. With every false, each goroutine reads a key
// of its own, as Token() is measured for a Subscriber: the cost of finding
// the key. With every true, each goroutine reads every key in turn, as a
// platform's backend serving requests for all its accounts may: the keys'
// entries are then seldom in a CPU cache, and the read waits on memory.
// The keys asked for lie side by side in memory, read in order, so that
// the misses counted are the Set's own.
func SetTokenRead(b *testing.B, every bool) {
	srv := testenv.NATS(b)
	var all strings.Builder
	for i := range SetKeys {
		all.WriteString(SetKey(i))
	}
	keys := make([]string, SetKeys)
	for i, n := 0, len(SetKey(0)); i < SetKeys; i++ {
		keys[i] = all.String()[i*n : (i+1)*n]
	}
	FillBucket(b, srv.ClientURL(), keys)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set, err := subscriber.NewSet(ctx, testenv.Connect(b, srv.ClientURL()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { set.Close() })
	if len(set.Keys()) != SetKeys {
		b.Fatalf("the set holds %d keys, want %d", len(set.Keys()), SetKeys)
	}
	var goroutines atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(goroutines.Add(1)*1009) % SetKeys // a key of its own
		var tok subscriber.Token
		for pb.Next() {
			tok = set.Token(keys[i])
			if every {
				if i++; i == SetKeys {
					i = 0
				}
			}
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
