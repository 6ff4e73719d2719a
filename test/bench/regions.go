package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// benchRegions are the regions of the regions part.
var benchRegions = []string{"shanghai", "shenzhen"}

// regionDelays parses -delay: a delay for each of benchRegions, or one for
// all of them.
func regionDelays(list string) map[string]time.Duration {
	var all []time.Duration
	for _, s := range strings.Split(list, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			log.Fatalf("-delay: %q is not a duration", s)
		}
		all = append(all, d)
	}
	if len(all) != 1 && len(all) != len(benchRegions) {
		log.Fatalf("-delay: %d delays for %d regions", len(all), len(benchRegions))
	}
	delays := map[string]time.Duration{}
	for i, name := range benchRegions {
		delays[name] = all[min(i, len(all)-1)]
	}
	return delays
}

// runRegionsSystem is the child process of the regions part: a hub NATS
// with a refresher, and a NATS per region joined to it by a leaf
// connection through a relay that delays every byte by the region's delay each way,
// each with its copy of the bucket. It prints where each NATS listens, and
// answers "bench.invalidate" (WeChat ends the current token) and
// "bench.relay" ("cut" or "heal" every relay) on the hub.
func runRegionsSystem(delays map[string]time.Duration) {
	dir, err := os.MkdirTemp("", "wxtoken-bench-regions")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	hubOpts, err := embedded.Options("127.0.0.1:-1", dir+"/hub")
	if err != nil {
		log.Fatal(err)
	}
	hubOpts.ServerName = "hub"
	testenv.HubOptions(hubOpts, "hub")
	hub, err := embedded.Start(hubOpts, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Shutdown()
	fake := fakewechat.New(fakewechat.Config{Overlap: -1})
	fake.AddApp(benchApp, "bench-secret")
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	nc, err := nats.Connect(hub.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	r, err := publisher.New(nc, publisher.Config{
		Apps:        []publisher.App{{AppID: benchApp, Secret: publisher.NewSecret("bench-secret")}},
		UpstreamURL: wechat.URL, MinForceInterval: time.Nanosecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	awaitToken(nc)

	urls := []string{"HUB=" + hub.ClientURL()}
	var relays []*testenv.Proxy
	for _, name := range benchRegions {
		relay, err := testenv.StartProxy(testenv.LeafAddr(hubOpts))
		if err != nil {
			log.Fatal(err)
		}
		relay.Delay(delays[name])
		relays = append(relays, relay)
		opts, err := embedded.Options("127.0.0.1:-1", dir+"/"+name)
		if err != nil {
			log.Fatal(err)
		}
		testenv.RegionOptions(opts, name, strings.TrimPrefix(relay.URL(), "nats://"), "", "")
		srv, err := embedded.Start(opts, nil)
		if err != nil {
			log.Fatal(err)
		}
		defer srv.Shutdown()
		for srv.NumLeafNodes() == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		rnc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			log.Fatal(err)
		}
		actx, acancel := context.WithTimeout(context.Background(), time.Minute)
		if _, err := region.Add(actx, rnc, region.Config{Hub: "hub"}); err != nil {
			log.Fatalf("region %s: %v", name, err)
		}
		acancel()
		rnc.Close()
		urls = append(urls, strings.ToUpper(name)+"="+srv.ClientURL())
	}
	nc.Subscribe("bench.invalidate", func(m *nats.Msg) {
		runtime.GC()
		fake.Issue(benchApp)
		m.Respond(nil)
	})
	nc.Subscribe("bench.relay", func(m *nats.Msg) {
		for _, relay := range relays {
			if string(m.Data) == "cut" {
				relay.Cut()
			} else {
				relay.Heal()
			}
		}
		m.Respond(nil)
	})
	nc.Flush()
	fmt.Println(strings.Join(urls, " "))
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent goes away
	for _, relay := range relays {
		relay.Close()
	}
	cancel()
	<-done
	nc.Close()
}

// awaitToken waits until the bucket holds benchApp's token.
func awaitToken(nc *nats.Conn) {
	js, _ := jetstream.New(nc)
	for range 600 {
		if b, err := kv.Bind(context.Background(), js, ""); err == nil {
			if _, err := b.Get(context.Background(), benchApp); err == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatal("no token in the bucket")
}

// regionFleet is n subscribers of benchApp on their own connections to one
// NATS, recording when each holds each revision.
type regionFleet struct {
	name  string
	conns []*nats.Conn
	subs  []*subscriber.Subscriber

	arrivals
	held map[uint64][]time.Time // when each subscriber held each revision
	core map[uint64][]time.Time // when each connection got each core message
}

// regionsCoreSubject carries the regions part's core messages, published
// at the hub, to every fleet's connections: the floor of the way from the
// hub, across the leaf connections and their relays.
const regionsCoreSubject = "bench.regions.core"

func newRegionFleet(name, url string, n int) *regionFleet {
	f := &regionFleet{name: name, arrivals: newArrivals(), held: map[uint64][]time.Time{}, core: map[uint64][]time.Time{}}
	f.conns, f.subs = make([]*nats.Conn, n), make([]*subscriber.Subscriber, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			nc, err := nats.Connect(url, nats.MaxReconnects(-1))
			if err != nil {
				log.Fatal(err)
			}
			nc.Subscribe(regionsCoreSubject, func(m *nats.Msg) {
				at := time.Now()
				f.arrived(f.core, binary.BigEndian.Uint64(m.Data), at)
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sub, err := subscriber.New(ctx, nc, benchApp, subscriber.OnRotate(func(_ *subscriber.Subscriber, t subscriber.Token) {
				f.arrived(f.held, t.Revision, time.Now())
			}))
			if err != nil {
				log.Fatalf("%s: %v", name, err)
			}
			f.conns[i], f.subs[i] = nc, sub
		})
	}
	wg.Wait()
	return f
}

// await waits until every connection recorded key in m, and returns when
// each did.
func (f *regionFleet) await(m map[uint64][]time.Time, key uint64, within time.Duration) ([]time.Time, bool) {
	deadline := time.After(within)
	for {
		f.mu.Lock()
		got := m[key]
		f.mu.Unlock()
		if len(got) >= len(f.subs) {
			return got, true
		}
		select {
		case <-f.progress:
		case <-deadline:
			return got, false
		}
	}
}

func (f *regionFleet) close() {
	for i := range f.subs {
		f.subs[i].Close()
		f.conns[i].Close()
	}
}

// regionsResult is what the regions part measured.
type regionsResult struct {
	n, rotations int
	delays       map[string]time.Duration // each region's link, each way
	hub          dist                     // the refresher's own NATS: the in-region floor
	regions      map[string]dist          // each region
	core         map[string]dist          // a core message from the hub, by fleet
	first        map[string]dist          // the first rotation after start, by fleet: not in hub and regions
	partition    time.Duration
	catchUp      map[string]time.Duration // from the heal until every subscriber held the newest
}

// regionsBench measures, with the links of delay (-delay's value), a
// rotation's way from the hub's KV write to n subscribers at the hub and n
// in each region, over rotations rotations;
// then a partition of every region for partition, with two rotations at
// the hub, and how long after the heal each region's subscribers all hold
// the newest token.
func regionsBench(n, rotations int, delay string, partition time.Duration) regionsResult {
	delays := regionDelays(delay)
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-role", "regions", "-delay", delay)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		log.Fatalf("regions system: %v", err)
	}
	urls := map[string]string{}
	for _, kv := range strings.Fields(line) {
		name, url, _ := strings.Cut(kv, "=")
		urls[strings.ToLower(name)] = url
	}
	fleets := []*regionFleet{newRegionFleet("hub", urls["hub"], n)}
	for _, name := range benchRegions {
		fleets = append(fleets, newRegionFleet(name, urls[name], n))
	}
	defer func() {
		for _, f := range fleets {
			f.close()
		}
	}()
	control, err := nats.Connect(urls["hub"])
	if err != nil {
		log.Fatal(err)
	}
	defer control.Close()
	js, _ := jetstream.New(control)
	bucket, err := kv.Bind(context.Background(), js, "")
	if err != nil {
		log.Fatal(err)
	}
	first, _ := bucket.Get(context.Background(), benchApp)
	rev := first.Revision()
	rotate := func() {
		runtime.GC()
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
	}

	samples, core := map[string][]time.Duration{}, map[string][]time.Duration{}
	measureRotation := func(samples map[string][]time.Duration) {
		rotate()
		e, err := bucket.GetRevision(context.Background(), benchApp, rev)
		if err != nil {
			log.Fatal(err)
		}
		for _, f := range fleets {
			arrivals, ok := f.await(f.held, rev, time.Minute)
			if !ok {
				log.Fatalf("%s: %d of %d subscribers hold revision %d", f.name, len(arrivals), n, rev)
			}
			for _, at := range arrivals {
				samples[f.name] = append(samples[f.name], at.Sub(e.Created()))
			}
		}
	}
	payload := make([]byte, len(first.Value())) // as much as a token record
	measureCore := func(i int, core map[string][]time.Duration) {
		runtime.GC()
		binary.BigEndian.PutUint64(payload, uint64(i))
		sent := time.Now()
		if err := control.Publish(regionsCoreSubject, payload); err != nil {
			log.Fatal(err)
		}
		for _, f := range fleets {
			arrivals, ok := f.await(f.core, uint64(i), time.Minute)
			if !ok {
				log.Fatalf("%s: %d of %d connections got core message %d", f.name, len(arrivals), n, i)
			}
			for _, at := range arrivals {
				core[f.name] = append(core[f.name], at.Sub(sent))
			}
		}
	}
	// The first rotation is not in the figures, as in part 2: it is the
	// first value each subscriber receives after it started, and its
	// goroutine's stack grows back on the way. It is reported apart.
	firstRotation := map[string][]time.Duration{}
	measureRotation(firstRotation)
	measureCore(rotations, map[string][]time.Duration{}) // a number no measured message has
	for i := range rotations {
		// Alternate which goes first, so that neither always follows the other.
		if i%2 == 0 {
			measureRotation(samples)
			measureCore(i, core)
		} else {
			measureCore(i, core)
			measureRotation(samples)
		}
		progress("regions n=%d: rotation %d/%d", n, i+1, rotations)
	}
	res := regionsResult{n: n, rotations: rotations, delays: delays, hub: summarize(samples["hub"]), regions: map[string]dist{},
		core: map[string]dist{}, first: map[string]dist{}, partition: partition, catchUp: map[string]time.Duration{}}
	for _, f := range fleets {
		res.regions[f.name], res.core[f.name], res.first[f.name] = summarize(samples[f.name]), summarize(core[f.name]), summarize(firstRotation[f.name])
	}

	progress("regions: a partition of %s", partition)
	if _, err := control.Request("bench.relay", []byte("cut"), 5*time.Second); err != nil {
		log.Fatal(err)
	}
	cut := time.Now()
	rotate()
	rotate()
	time.Sleep(time.Until(cut.Add(partition))) // the partition's length is what is measured
	if _, err := control.Request("bench.relay", []byte("heal"), 5*time.Second); err != nil {
		log.Fatal(err)
	}
	healed := time.Now()
	for _, f := range fleets[1:] {
		arrivals, ok := f.await(f.held, rev, 5*time.Minute)
		if !ok {
			log.Fatalf("%s: %d of %d subscribers hold the newest revision 5 minutes after the heal", f.name, len(arrivals), n)
		}
		last := healed
		for _, at := range arrivals {
			if at.After(last) {
				last = at
			}
		}
		res.catchUp[f.name] = last.Sub(healed)
	}
	return res
}

// regionsRows are the regions part's lines and table rows.
func regionsRows(r regionsResult) []row {
	benchLine(fmt.Sprintf("Regions/n=%d/hub", r.n), r.hub.n, fmt.Sprintf("%.3f", ms(r.hub.p50)), "p50-ms",
		fmt.Sprintf("%.3f", ms(r.hub.p99)), "p99-ms", fmt.Sprintf("%.3f", ms(r.hub.max)), "max-ms")
	for _, name := range append([]string{"hub"}, benchRegions...) {
		d := r.core[name]
		benchLine(fmt.Sprintf("Regions/n=%d/%s/core-from-hub", r.n, name), d.n, fmt.Sprintf("%.3f", ms(d.p50)), "p50-ms",
			fmt.Sprintf("%.3f", ms(d.p99)), "p99-ms", fmt.Sprintf("%.3f", ms(d.max)), "max-ms")
		d = r.first[name]
		benchLine(fmt.Sprintf("Regions/n=%d/%s/first-rotation", r.n, name), d.n, fmt.Sprintf("%.3f", ms(d.p50)), "p50-ms",
			fmt.Sprintf("%.3f", ms(d.max)), "max-ms")
	}
	var rows []row
	for _, name := range benchRegions {
		d, delay := r.regions[name], r.delays[name]
		bound := r.hub.p99 + delay + 5*time.Millisecond
		benchLine(fmt.Sprintf("Regions/n=%d/%s", r.n, name), d.n, fmt.Sprintf("%.3f", ms(d.p50)), "p50-ms",
			fmt.Sprintf("%.3f", ms(d.p99)), "p99-ms", fmt.Sprintf("%.3f", ms(d.max)), "max-ms")
		rows = append(rows, row{fmt.Sprintf("9 regions n=%d %s", r.n, name),
			fmt.Sprintf("KV write at the hub → held in the region, %s each way, %d rotations", delay, r.rotations),
			fmt.Sprintf("p50 %.1f / p99 %.1f / max %.1f ms", ms(d.p50), ms(d.p99), ms(d.max)),
			fmt.Sprintf("at the hub: p50 %.1f / p99 %.1f ms; + one way %.0f ms (a core message from the hub: p50 %.1f / p99 %.1f ms here)",
				ms(r.hub.p50), ms(r.hub.p99), ms(delay), ms(r.core[name].p50), ms(r.core[name].p99)),
			fmt.Sprintf("p99 %+.1f ms over hub p99 + one way", ms(d.p99-r.hub.p99-delay)),
			"p99 ≤ hub p99 + one way + 5 ms", verdict(d.p99 <= bound)})
	}
	for _, name := range benchRegions {
		benchLine(fmt.Sprintf("Regions/partition=%s/%s", r.partition, name), 1, fmt.Sprintf("%.3f", r.catchUp[name].Seconds()), "s-catch-up")
		rows = append(rows, row{fmt.Sprintf("9 regions partition %s", name),
			fmt.Sprintf("every region cut off %s, two rotations at the hub", r.partition),
			fmt.Sprintf("all %d hold the newest %.2f s after the heal", r.n, r.catchUp[name].Seconds()), "", "", "≤ 10 s",
			verdict(r.catchUp[name] <= 10*time.Second)})
	}
	return rows
}
