package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/swapprobe"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// fleet is n service connections, each following the keys (a Subscriber
// of benchApp in this process, or a Set of every key in a process of its
// own) and subscribed to the floors' subjects. A new value is recorded the
// moment a subscriber or set swaps it in, a floor message in its
// subscription's callback: each the first code after the one hand-off
// from nats.go's reader.
type fleet struct {
	size    int
	closers []func() error
	cpu     func() time.Duration // the followers' CPU time so far

	arrivals
	rotated map[uint64][]time.Time // when each follower held each revision
	core    map[uint64][]time.Time // when each connection got each core floor message
	durable map[uint64][]time.Time // when each connection got each durable floor message
}

// arrivals guards a fleet's records of when each message arrived, and
// says on progress that one did.
type arrivals struct {
	mu       sync.Mutex
	progress chan struct{} // a value after every arrival
}

func newArrivals() arrivals { return arrivals{progress: make(chan struct{}, 1)} }

const (
	coreFloorSubject    = "bench.floor.core"
	durableFloorSubject = "bench.floor.durable"
)

// newFleet connects n services to url, each following with follow (which
// returns what closes it).
func newFleet(url string, n int, follow func(ctx context.Context, nc *nats.Conn) (func() error, error)) *fleet {
	f := newEmptyFleet(n, ownCPU)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			nc, err := nats.Connect(url, nats.MaxReconnects(-1))
			if err != nil {
				log.Fatal(err)
			}
			for subject, m := range map[string]map[uint64][]time.Time{coreFloorSubject: f.core, durableFloorSubject: f.durable} {
				nc.Subscribe(subject, func(msg *nats.Msg) {
					at := time.Now()
					f.arrived(m, binary.BigEndian.Uint64(msg.Data), at)
				})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			closer, err := follow(ctx, nc)
			if err != nil {
				log.Fatal(err)
			}
			f.closers[i] = func() error {
				err := closer()
				nc.Close()
				return err
			}
		})
	}
	wg.Wait()
	// The instant each follower swaps a new value in: when its Token()
	// starts returning it.
	swapprobe.Set(func(_ string, revision uint64) { f.arrived(f.rotated, revision, time.Now()) })
	return f
}

// newEmptyFleet is a fleet of n followers, none started yet, whose CPU
// time so far cpu tells.
func newEmptyFleet(n int, cpu func() time.Duration) *fleet {
	return &fleet{size: n, cpu: cpu, closers: make([]func() error, n), arrivals: newArrivals(),
		core: map[uint64][]time.Time{}, durable: map[uint64][]time.Time{}, rotated: map[uint64][]time.Time{}}
}

func (a *arrivals) arrived(m map[uint64][]time.Time, key uint64, at time.Time) {
	a.mu.Lock()
	m[key] = append(m[key], at)
	a.mu.Unlock()
	select {
	case a.progress <- struct{}{}:
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
		if len(got) >= f.size {
			return got
		}
		select {
		case <-f.progress:
		case <-deadline:
			log.Fatalf("only %d of %d arrivals", len(got), f.size)
		}
	}
}

func (f *fleet) close() {
	swapprobe.Set(nil)
	for _, close := range f.closers {
		close()
	}
}

// propagated is what one propagation run measured: wxtoken's latency from
// the KV write to each follower holding the value, and the floors'.
type propagated struct {
	wxtoken dist
	// core: a core NATS message of the same size, published to the same
	// connections by a plain client beside the refresher, from before the
	// publish to each receipt.
	core dist
	// durable: a JetStream compare-and-swap write of the same bytes to a
	// bucket like the token bucket, its acknowledgement, then the core
	// publish of the message a value is (the bytes and a revision
	// header), by a plain client beside the refresher; from the write's
	// timestamp in the stream to each receipt, as wxtoken's is measured.
	// A rotation must be stored before it is announced, so this is
	// wxtoken's real floor.
	durable dist
	// durableClient: the same, from before the write request left the
	// client (the wording): one loopback crossing more than
	// wxtoken's measure counts.
	durableClient dist
	// first and firstDurable: the first rotation after the followers
	// started, and the first durable floor message, measured apart.
	first, firstDurable dist
	// cpu and durableCPU: the CPU time this process (the followers') spent
	// on a rotation and on a durable floor message, from after the round's
	// collection until every follower held it, per follower. Less
	// disturbed by other work on the machine than a latency, it shows what
	// wxtoken does on each receipt that the floor's callback does not. A
	// rotation's includes the three requests that start and check it.
	// Zero for followers in processes of their own (newProcessFleet).
	cpu, durableCPU time.Duration
}

// propagation measures the time from the refresher's KV write of a new
// token to each of n subscribers of benchApp holding it, over rotations
// rotations, and the floors to the same n connections.
func propagation(n, rotations int) propagated {
	sys := startSystem(2*time.Hour, time.Nanosecond, 1)
	defer sys.stop()
	f := newFleet(sys.url, n, func(ctx context.Context, nc *nats.Conn) (func() error, error) {
		sub, err := subscriber.New(ctx, nc, benchApp)
		if err != nil {
			return nil, err
		}
		return sub.Close, nil
	})
	defer f.close()
	return measure(sys, f, fmt.Sprintf("n=%d", n), rotations, func(int) string { return benchApp })
}

// setPropagation measures the same with n processes, each following every
// one of keys keys with a Set, and rotations of keys picked at random.
func setPropagation(n, keys, rotations int) propagated {
	sys := startSystem(2*time.Hour, time.Nanosecond, keys)
	defer sys.stop()
	sys.awaitKeys(keys)
	f := newProcessFleet(sys.url, n, keys)
	defer f.close()
	return measure(sys, f, fmt.Sprintf("sets n=%d keys=%d", n, keys), rotations, func(int) string { return benchKey(rand.N(keys)) })
}

// measure runs rotations rounds of a real rotation of the key pick(round)
// names, a core floor and a durable floor, in turns.
func measure(sys *system, f *fleet, name string, rotations int, pick func(round int) string) propagated {
	control, err := nats.Connect(sys.url)
	if err != nil {
		log.Fatal(err)
	}
	defer control.Close()
	js, _ := jetstream.New(control)
	ctx := context.Background()
	tokens, err := kv.Bind(ctx, js, "")
	if err != nil {
		log.Fatal(err)
	}
	first, err := tokens.Get(ctx, benchApp)
	if err != nil {
		log.Fatal(err)
	}
	size := len(first.Value()) // the floors carry as much as a token record
	// Each kind of round returns its samples: wxtoken's from the write to
	// each follower holding the value, the floors' from the write (or the
	// publish) to each receipt.
	rotate := func(round int) (wxtoken []time.Duration, cpu time.Duration) {
		runtime.GC() // each round starts with no garbage to collect, in every kind
		start := f.cpu()
		key := pick(round)
		e, err := tokens.Get(ctx, key)
		if err != nil {
			log.Fatal(err)
		}
		rev := e.Revision()
		// A real rotation: WeChat invalidates the token, a service asks.
		if _, err := control.Request("bench.invalidate", []byte(key), 5*time.Second); err != nil {
			log.Fatal(err)
		}
		msg, err := control.Request(kv.Subjects{}.Refresh(key), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &rev}), 10*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		var reply kv.RefreshReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Error != nil || !reply.Refreshed {
			log.Fatalf("refresh %s: %s", key, msg.Data)
		}
		arrivals := f.await(f.rotated, reply.Revision)
		cpu = f.cpu() - start
		stored, err := tokens.GetRevision(ctx, key, reply.Revision)
		if err != nil {
			log.Fatal(err)
		}
		for _, at := range arrivals {
			wxtoken = append(wxtoken, at.Sub(stored.Created()))
		}
		return wxtoken, cpu
	}
	// The floors' messages leave the system's process, from a plain
	// client on a connection of its own, as the refresher's values do.
	floor := func(durable bool, round int) (arrivals []time.Time, reply floorReply, cpu time.Duration) {
		runtime.GC()
		start := f.cpu()
		req, _ := json.Marshal(floorRequest{Durable: durable, Round: uint64(round), Size: size})
		msg, err := control.Request("bench.floor", req, 10*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			log.Fatal(err)
		}
		m := f.core
		if durable {
			m = f.durable
		}
		arrivals = f.await(m, uint64(round))
		return arrivals, reply, f.cpu() - start
	}
	coreFloor := func(round int) (core []time.Duration) {
		arrivals, reply, _ := floor(false, round)
		for _, at := range arrivals {
			core = append(core, at.Sub(reply.Sent))
		}
		return core
	}
	durableFloor := func(round int) (durable, durableClient []time.Duration, cpu time.Duration) {
		arrivals, reply, cpu := floor(true, round)
		for _, at := range arrivals {
			durable = append(durable, at.Sub(reply.Stored))
			durableClient = append(durableClient, at.Sub(reply.Sent))
		}
		return durable, durableClient, cpu
	}

	// The first round of each kind is not in the figures: it is the
	// first value each follower receives after it started, and its
	// goroutine's stack, shrunk by the collector while it waited, grows
	// back on the way (with GODEBUG=gcshrinkstackoff=1 the first round is
	// like the others). A service pays that once, not at each rotation;
	// it is reported on its own.
	firstRotation, _ := rotate(0)
	firstDurable, _, _ := durableFloor(0)
	coreFloor(0)
	var wxtoken, core, durable, durableClient []time.Duration
	var wxtokenCPU, durableCPU time.Duration
	kinds := []func(int){
		func(round int) {
			w, cpu := rotate(round)
			wxtoken, wxtokenCPU = append(wxtoken, w...), wxtokenCPU+cpu
		},
		func(round int) { core = append(core, coreFloor(round)...) },
		func(round int) {
			d, c, cpu := durableFloor(round)
			durable, durableClient, durableCPU = append(durable, d...), append(durableClient, c...), durableCPU+cpu
		},
	}
	for round := 1; round <= rotations; round++ {
		// Take turns at going first, so that none always follows another.
		for i := range kinds {
			kinds[(round+i)%len(kinds)](round)
		}
		progress("propagation %s: round %d/%d", name, round, rotations)
	}
	return propagated{wxtoken: summarize(wxtoken), core: summarize(core), durable: summarize(durable), durableClient: summarize(durableClient),
		first: summarize(firstRotation), firstDurable: summarize(firstDurable),
		cpu: wxtokenCPU / time.Duration(max(len(wxtoken), 1)), durableCPU: durableCPU / time.Duration(max(len(durable), 1))}
}

var lastProgress struct {
	sync.Mutex
	text string
	at   time.Time
}

// progress shows a status line on stderr, rewritten in place, at most four
// times a second. It may be called from any goroutine.
func progress(format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	lastProgress.Lock()
	defer lastProgress.Unlock()
	if text == lastProgress.text || time.Since(lastProgress.at) < 250*time.Millisecond {
		return
	}
	lastProgress.text, lastProgress.at = text, time.Now()
	fmt.Fprintf(stderr, "\r%s        ", text)
}
