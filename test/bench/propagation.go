package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/swapprobe"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// fleet is n service connections in this process, each with a subscriber
// for benchApp and a core subscription for the floor measurement. A new
// token is recorded the moment a subscriber swaps it in, a floor message
// in its subscription's callback: each the first code after the one
// hand-off from nats.go's reader.
type fleet struct {
	conns []*nats.Conn
	subs  []*subscriber.Subscriber

	mu       sync.Mutex
	rotated  map[uint64][]time.Time // when each subscriber held each revision
	floor    map[uint64][]time.Time // when each connection got each floor message
	progress chan struct{}          // a value after every arrival
}

const floorSubject = "bench.floor"

func newFleet(url string, n int) *fleet {
	f := &fleet{rotated: map[uint64][]time.Time{}, floor: map[uint64][]time.Time{}, progress: make(chan struct{}, 1)}
	f.conns = make([]*nats.Conn, n)
	f.subs = make([]*subscriber.Subscriber, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			nc, err := nats.Connect(url, nats.MaxReconnects(-1))
			if err != nil {
				log.Fatal(err)
			}
			nc.Subscribe(floorSubject, func(m *nats.Msg) {
				at := time.Now()
				f.arrived(f.floor, binary.BigEndian.Uint64(m.Data), at)
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sub, err := subscriber.New(ctx, nc, benchApp)
			if err != nil {
				log.Fatal(err)
			}
			f.conns[i], f.subs[i] = nc, sub
		}()
	}
	wg.Wait()
	// The instant each subscriber swaps a new token in: when its Token()
	// starts returning it.
	swapprobe.Set(func(_ string, revision uint64) { f.arrived(f.rotated, revision, time.Now()) })
	return f
}

func (f *fleet) arrived(m map[uint64][]time.Time, key uint64, at time.Time) {
	f.mu.Lock()
	m[key] = append(m[key], at)
	f.mu.Unlock()
	select {
	case f.progress <- struct{}{}:
	default:
	}
}

// await waits until every connection recorded key in m.
func (f *fleet) await(m map[uint64][]time.Time, key uint64) []time.Time {
	deadline := time.After(time.Minute)
	for {
		f.mu.Lock()
		got := m[key]
		f.mu.Unlock()
		if len(got) >= len(f.conns) {
			return got
		}
		select {
		case <-f.progress:
		case <-deadline:
			log.Fatalf("only %d of %d arrivals", len(got), len(f.conns))
		}
	}
}

func (f *fleet) close() {
	swapprobe.Set(nil)
	for i := range f.subs {
		f.subs[i].Close()
		f.conns[i].Close()
	}
}

// propagation measures the time from the refresher's KV write of a new
// token to each of n subscribers holding it, over rotations rotations, and
// the floor: a core NATS message of the same size published to the same n
// connections.
func propagation(n, rotations int) (watch, floor dist) {
	sys := startSystem(2*time.Hour, time.Nanosecond)
	defer sys.stop()
	f := newFleet(sys.url, n)
	defer f.close()
	control, err := nats.Connect(sys.url)
	if err != nil {
		log.Fatal(err)
	}
	defer control.Close()
	js, _ := jetstream.New(control)
	ctx := context.Background()
	bucket, err := kv.Bind(ctx, js, "")
	if err != nil {
		log.Fatal(err)
	}
	first, _ := bucket.Get(ctx, benchApp)
	payload := make([]byte, len(first.Value())) // the floor carries as much as a token record

	var subLat, floorLat []time.Duration
	rev := first.Revision()
	rotate := func() {
		runtime.GC() // each round starts with no garbage to collect, in both kinds
		// A real rotation: WeChat invalidates the token, a service asks.
		if _, err := control.Request("bench.invalidate", nil, 5*time.Second); err != nil {
			log.Fatal(err)
		}
		msg, err := control.Request(kv.Subjects{}.Refresh(benchApp), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &rev}), 10*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		var reply kv.RefreshReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Error != nil || !reply.Refreshed {
			log.Fatalf("refresh: %s", msg.Data)
		}
		rev = reply.Revision
		arrivals := f.await(f.rotated, rev)
		e, err := bucket.GetRevision(ctx, benchApp, rev)
		if err != nil {
			log.Fatal(err)
		}
		for _, at := range arrivals {
			subLat = append(subLat, at.Sub(e.Created()))
		}
	}
	fanOut := func(i int) {
		runtime.GC()
		sent := time.Now()
		binary.BigEndian.PutUint64(payload, uint64(i))
		if err := control.Publish(floorSubject, payload); err != nil {
			log.Fatal(err)
		}
		for _, at := range f.await(f.floor, uint64(i)) {
			floorLat = append(floorLat, at.Sub(sent))
		}
	}
	for i := range rotations {
		// Alternate which goes first, so that neither always follows the other.
		if i%2 == 0 {
			rotate()
			fanOut(i)
		} else {
			fanOut(i)
			rotate()
		}
		progress("propagation n=%d: rotation %d/%d", n, i+1, rotations)
	}
	return summarize(subLat), summarize(floorLat)
}

var lastProgress struct {
	text string
	at   time.Time
}

// progress shows a status line on stderr, rewritten in place, at most four
// times a second.
func progress(format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	if text == lastProgress.text || time.Since(lastProgress.at) < 250*time.Millisecond {
		return
	}
	lastProgress.text, lastProgress.at = text, time.Now()
	fmt.Fprintf(stderr, "\r%s        ", text)
}
