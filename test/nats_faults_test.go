package test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// freePort returns a loopback port outside Linux's ephemeral range
// (32768-60999), so that a restarted or clustered server can bind it again
// without racing outgoing connections for it.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// restartableNATS starts a JetStream server on a fixed loopback port, so
// that startServer(t, opts) can bring it back on the same port and store.
func restartableNATS(t *testing.T) (opts *server.Options, url string, stop func()) {
	t.Helper()
	opts, err := embedded.Options(fmt.Sprintf("127.0.0.1:%d", freePort(t)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, stop = startServer(t, opts)
	return opts, fmt.Sprintf("nats://%s:%d", opts.Host, opts.Port), stop
}

// startServer starts a server with opts; stop shuts it down (idempotent).
func startServer(t *testing.T, opts *server.Options) (s *server.Server, stop func()) {
	t.Helper()
	copied := *opts
	s, err := embedded.Start(&copied, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop = func() {
		s.Shutdown()
		s.WaitForShutdown()
	}
	t.Cleanup(stop)
	return s, stop
}

// goroutines counts goroutines after giving exiting ones a moment to end:
// it waits until two counts 50ms apart agree.
func goroutines() int {
	prev := runtime.NumGoroutine()
	for range 40 {
		time.Sleep(50 * time.Millisecond) // settling, not synchronisation: goroutines finish exiting
		n := runtime.NumGoroutine()
		if n == prev {
			return n
		}
		prev = n
	}
	return prev
}

// TestRideThroughNATSRestarts restarts the NATS server (same port, same
// store) four times under a refresher and a subscriber connected over TCP.
// After each restart a rejected token is refreshed end to end: the refresh
// endpoint answers, the refresher writes and announces, the subscriber's
// subscription (restored by nats.go) delivers. The goroutine count does not
// grow with the restarts.
func TestRideThroughNATSRestarts(t *testing.T) {
	ctx := testenv.Context(t, 120*time.Second)
	opts, natsURL, stop := restartableNATS(t)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	testenv.Refresher(t, testenv.Connect(t, natsURL), publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: wechatURL,
		MinForceInterval: time.Nanosecond})
	// A request written to the connection of a server just stopped, before
	// nats.go noticed, is lost and waits out its 10s timeout: the 5s below
	// count from the subscriber's reconnection.
	reconnected := make(chan struct{}, 8)
	sub := newSubscriber(t, ctx, testenv.Connect(t, natsURL, nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })))

	var counts []int
	for i := range 4 {
		stop()
		_, stop = startServer(t, opts)
		select {
		case <-reconnected:
		case <-ctx.Done():
			t.Fatalf("restart %d: the subscriber's connection never came back", i+1)
		}
		fake.Issue(appA) // the token in the bucket is dead
		stale := sub.Token()
		// 5s: well under the 10-20s a KV watch would need to notice its
		// lost consumer by itself (see TestFollowerRidesThroughRestarts).
		fresh, err := sub.Refresh(testenv.Context(t, 5*time.Second), stale.Revision)
		if err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
		if fresh.Revision <= stale.Revision || fresh.Value != fake.Current(appA) {
			t.Fatalf("restart %d: subscriber holds revision %d, want WeChat's new token", i+1, fresh.Revision)
		}
		counts = append(counts, goroutines())
	}
	t.Logf("goroutines after each restart: %v", counts)
	if grown := counts[len(counts)-1] - counts[0]; grown > 5 {
		t.Errorf("goroutines grew by %d over %d restarts: %v", grown, len(counts)-1, counts)
	}
}

// TestFollowerRidesThroughRestarts: a KV watch (what the refresher uses on
// the bucket, and subscribers when values are not published) comes back
// with the connection after a real server restart and delivers what was
// written while it was down and after. nats.go alone would notice the lost
// consumer only after 10-20s; the test allows 5s.
func TestFollowerRidesThroughRestarts(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	opts, url, stop := restartableNATS(t)
	nc := testenv.Connect(t, url)
	js, _ := jetstream.New(nc)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "follow", History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	entries := make(chan jetstream.KeyValueEntry, 16)
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: "k", Conn: nc, OnEntry: func(e jetstream.KeyValueEntry) { entries <- e }})
	writer := testenv.Connect(t, url)
	wjs, _ := jetstream.New(writer)
	// put writes v, retrying while the writer reconnects and the server
	// recovers the stream: an attempt can be lost on the way, or stored
	// with its answer lost, and then the next stores v again.
	put := func(v string) uint64 {
		t.Helper()
		for {
			attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
			wb, err := wjs.KeyValue(attempt, "follow")
			var rev uint64
			if err == nil {
				rev, err = wb.Put(attempt, "k", []byte(v))
			}
			cancel()
			if err == nil {
				return rev
			}
			if ctx.Err() != nil {
				t.Fatalf("put %q: %v", v, err)
			}
		}
	}
	put("before")
	testenv.Next(t, ctx, entries)
	for i := range 3 {
		stop()
		_, stop = startServer(t, opts)
		v := fmt.Sprintf("after restart %d", i+1)
		rev := put(v)
		// The follower delivers rev within 5s; before it, at most earlier
		// stores of the same value.
		within := testenv.Context(t, 5*time.Second)
		for {
			e := testenv.Next(t, within, entries)
			if e.Revision() == rev {
				break
			}
			if e.Revision() > rev || string(e.Value()) != v {
				t.Fatalf("restart %d: revision %d (%q) before %d", i+1, e.Revision(), e.Value(), rev)
			}
		}
	}
}

// clusterOptions returns the options of three JetStream servers that form
// a cluster, each with a fixed client port, and the client URLs of all
// three, comma-separated.
func clusterOptions(t *testing.T) ([]*server.Options, string) {
	t.Helper()
	routePorts := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	all := make([]*server.Options, 3)
	var urls []string
	for i := range all {
		opts, err := embedded.Options(fmt.Sprintf("127.0.0.1:%d", freePort(t)), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		opts.ServerName = fmt.Sprintf("n%d", i+1)
		opts.Cluster = server.ClusterOpts{Name: "wxtoken", Host: "127.0.0.1", Port: routePorts[i]}
		opts.Routes = routes
		all[i] = opts
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", opts.Port))
	}
	return all, strings.Join(urls, ",")
}

// cluster starts three JetStream servers with routes and waits until they
// have a meta leader and three peers.
func cluster(t *testing.T, ctx context.Context) ([]*server.Server, []func()) {
	t.Helper()
	all, _ := clusterOptions(t)
	servers := make([]*server.Server, 3)
	stops := make([]func(), 3)
	for i, opts := range all {
		servers[i], stops[i] = startServer(t, opts) // ready for clients; JetStream needs the others
	}
	awaitMetaLeader(t, ctx, servers, len(servers))
	return servers, stops
}

// awaitMetaLeader waits until the cluster of servers has a JetStream meta
// leader that counts peers peers.
func awaitMetaLeader(t *testing.T, ctx context.Context, servers []*server.Server, peers int) {
	t.Helper()
	for {
		// Only the meta leader answers JetStreamClusterPeers.
		leaders, counted := 0, 0
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
				counted = len(s.JetStreamClusterPeers())
			}
		}
		if leaders == 1 && counted == peers {
			return
		}
		select {
		case <-ctx.Done():
			for _, s := range servers {
				t.Logf("%s: peers %v leader %v js %v", s.Name(), s.JetStreamClusterPeers(), s.JetStreamIsLeader(), s.JetStreamEnabled())
			}
			t.Fatal("cluster never formed")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// awaitBucketAnswers waits until reads of a bucket just created in a
// cluster are answered: its stream has a leader, and its replicas answer
// direct gets, a moment after the creation is acknowledged (until then a
// read finds no responders).
func awaitBucketAnswers(t *testing.T, ctx context.Context, b jetstream.KeyValue) {
	t.Helper()
	for {
		_, err := b.Get(ctx, "wxtoken-test-probe")
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("bucket %s never answered a read: %v", b.Bucket(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestClusterSurvivesLosingANode runs the refresher against a three-node
// cluster with a bucket of three replicas, then shuts down the node that
// leads the token stream. Tokens keep rotating on schedule, a refresh
// request is served, and a subscriber sees every new token.
func TestClusterSurvivesLosingANode(t *testing.T) {
	ctx := testenv.Context(t, 120*time.Second)
	servers, stops := cluster(t, ctx)
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	all := strings.Join(urls, ",")
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 3 * time.Second, Overlap: -1})
	testenv.Refresher(t, testenv.Connect(t, all), publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: wechatURL, Replicas: 3})
	sub := newSubscriber(t, ctx, testenv.Connect(t, all))

	js, _ := jetstream.New(testenv.Connect(t, all))
	stopStreamLeader(t, ctx, js, "KV_"+kv.DefaultBucket, servers, stops)

	// Scheduled rotations go on: the subscriber sees two new tokens.
	seen := sub.Token().Revision
	for range 2 {
		tok := awaitNewer(t, ctx, sub, seen)
		if ok, code := fake.Valid(tok.Value); !ok {
			t.Fatalf("revision %d: WeChat rejects it with %d", tok.Revision, code)
		}
		seen = tok.Revision
	}
	// And a refresh request is served.
	fake.Issue(appA)
	fresh, err := sub.Refresh(ctx, seen)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Value != fake.Current(appA) {
		t.Error("refreshed token is not WeChat's current one")
	}
}

// stopStreamLeader shuts down the server that leads stream, which must
// have 3 replicas.
func stopStreamLeader(t *testing.T, ctx context.Context, js jetstream.JetStream, stream string, servers []*server.Server, stops []func()) {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 {
		t.Fatalf("stream %s has %d replicas, want 3", stream, info.Config.Replicas)
	}
	for i, s := range servers {
		if s.Name() == info.Cluster.Leader {
			stops[i]()
			t.Logf("shut down %s, the leader of %s", s.Name(), stream)
		}
	}
}

// awaitNewer waits until sub holds a token newer than revision.
func awaitNewer(t *testing.T, ctx context.Context, sub *subscriber.Subscriber, revision uint64) subscriber.Token {
	t.Helper()
	for {
		if tok := sub.Token(); tok.Revision > revision {
			return tok
		}
		select {
		case <-sub.Updated():
		case <-ctx.Done():
			t.Fatalf("no token after revision %d", revision)
		}
	}
}
