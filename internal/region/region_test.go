package region_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

const (
	appA = "wx0000000000000001"
	appB = "wx0000000000000002"
)

// world is a hub with its token bucket and a region joined to it through a
// relay.
type world struct {
	hub       jetstream.KeyValue // the hub's bucket
	hubURL    string
	relay     *testenv.Proxy
	region    *server.Server
	regionNC  *nats.Conn
	regionURL string
}

func newWorld(t *testing.T, ctx context.Context) world {
	t.Helper()
	hubSrv, leaf := testenv.HubNATS(t, "hub")
	js, err := jetstream.New(testenv.Connect(t, hubSrv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	relay := testenv.NewProxy(t, leaf)
	regionSrv := testenv.RegionNATS(t, "shanghai", strings.TrimPrefix(relay.URL(), "nats://"), "", "")
	testenv.AwaitLeaf(t, ctx, regionSrv)
	return world{hub: b, hubURL: hubSrv.ClientURL(), relay: relay, region: regionSrv, regionNC: testenv.Connect(t, regionSrv.ClientURL()), regionURL: regionSrv.ClientURL()}
}

func put(t *testing.T, ctx context.Context, b jetstream.KeyValue, key, token string) uint64 {
	t.Helper()
	data, err := kv.EncodeCredential(kv.NewCredential(key, token, 2*time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := b.Put(ctx, key, data)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestACopyServesReadsAndRepublishesValues: the copy region add makes is
// bound by the bucket's own name in the region, holds the hub's values at
// the hub's revisions, and republishes each value it stores on the value
// subject, where the revision is the hub's too.
func TestACopyServesReadsAndRepublishesValues(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := newWorld(t, ctx)
	first := put(t, ctx, w.hub, appA, "token-1")

	c, err := region.Add(ctx, w.regionNC, region.Config{Hub: "hub"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Region != "shanghai" || c.Hub != "hub" || !c.Current() || !c.Republishes || c.Values != 1 {
		t.Errorf("copy %+v", c)
	}
	js, _ := jetstream.New(w.regionNC)
	copied, err := kv.Bind(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := copied.Get(ctx, appA); err != nil || e.Revision() != first || !strings.Contains(string(e.Value()), "token-1") {
		t.Fatalf("the copy's %s: %v", appA, err)
	}
	if ok, err := kv.PublishesValues(ctx, copied, kv.Subjects{}); !ok || err != nil {
		t.Errorf("the copy does not say that values are published: %v", err)
	}

	values, err := w.regionNC.SubscribeSync(kv.Subjects{}.Value(">"))
	if err != nil {
		t.Fatal(err)
	}
	w.regionNC.Flush()
	second := put(t, ctx, w.hub, appA, "token-2")
	m, err := values.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev, record, err := kv.DecodeValueMsg(m)
	if err != nil || rev != second || m.Subject != (kv.Subjects{}).Value(appA) || !strings.Contains(string(record), "token-2") {
		t.Errorf("republished %s revision %d %q: %v, want revision %d", m.Subject, rev, record, err, second)
	}

	again, err := region.Add(ctx, w.regionNC, region.Config{Hub: "hub"})
	if err != nil || !again.Current() || again.Values != 1 { // history 1: the newest value of the one key
		t.Errorf("adding the same copy again: %+v %v", again, err)
	}
}

// TestACopyOfSomeKeys holds only the keys named.
func TestACopyOfSomeKeys(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := newWorld(t, ctx)
	put(t, ctx, w.hub, appA, "token-a")
	put(t, ctx, w.hub, appB, "token-b")
	if _, err := region.Add(ctx, w.regionNC, region.Config{Hub: "hub", Keys: []string{appB, appB + ".>"}}); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(w.regionNC)
	copied, err := kv.Bind(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := copied.Keys(ctx)
	if err != nil || len(keys) != 1 || keys[0] != appB {
		t.Errorf("the copy of %s holds %v (%v)", appB, keys, err)
	}
	_, err = region.Add(ctx, w.regionNC, region.Config{Hub: "hub"})
	if err == nil || !strings.Contains(err.Error(), "holds the keys "+appB+","+appB+".>, not every key") {
		t.Errorf("another filter over an existing copy: %v", err)
	}
}

// TestAddSaysWhatIsWrong: a NATS with no domain, the hub's own, a hub out
// of reach, a bucket of the region's own and a bad key pattern are each
// refused with what to do.
func TestAddSaysWhatIsWrong(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := newWorld(t, ctx)
	put(t, ctx, w.hub, appA, "token")
	for _, tc := range []struct {
		name string
		nc   *nats.Conn
		cfg  region.Config
		want string
	}{
		{"no domain", testenv.Connect(t, testenv.NATS(t).ClientURL()), region.Config{Hub: "hub"}, "has no JetStream domain"},
		{"the hub", testenv.Connect(t, w.hubURL), region.Config{Hub: "hub"}, "this NATS is the hub's"},
		{"wrong hub domain", w.regionNC, region.Config{Hub: "hq"}, "is the leaf connection to the hub up"},
		{"no bucket at the hub", w.regionNC, region.Config{Hub: "hub", Bucket: "other"}, `has no bucket "other": start wxtoken serve at the hub first`},
		{"bad key", w.regionNC, region.Config{Hub: "hub", Keys: []string{"wx1.>.x"}}, `key "wx1.>.x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			short, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if _, err := region.Add(short, tc.nc, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}

	t.Run("a bucket of its own", func(t *testing.T) {
		hubJS, _ := jetstream.New(testenv.Connect(t, w.hubURL))
		regionJS, _ := jetstream.New(w.regionNC)
		for _, js := range []jetstream.JetStream{hubJS, regionJS} {
			if _, err := bucket.Open(ctx, js, bucket.Config{Name: "own"}); err != nil {
				t.Fatal(err)
			}
		}
		_, err := region.Add(ctx, w.regionNC, region.Config{Hub: "hub", Bucket: "own"})
		if err == nil || !strings.Contains(err.Error(), `a bucket "own" of its own, not a copy of the hub's (a refresher run here without --hub-domain hub?)`) {
			t.Errorf("got %v", err)
		}
	})
}

// TestMonitorCountsTheAgeOfACopyCutOff: while the region answers, its
// copy's lag is the second or so since it heard from the hub; cut off,
// the lag grows with the partition, and the heal brings it back.
func TestMonitorCountsTheAgeOfACopyCutOff(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	hubSrv, leaf := testenv.HubNATS(t, "hub")
	hubNC := testenv.Connect(t, hubSrv.ClientURL())
	js, _ := jetstream.New(hubNC)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	put(t, ctx, b, appA, "token")
	relay := testenv.NewProxy(t, leaf)
	regionSrv := testenv.RegionNATS(t, "shanghai", strings.TrimPrefix(relay.URL(), "nats://"), "", "")
	testenv.AwaitLeaf(t, ctx, regionSrv)
	if _, err := region.Add(ctx, testenv.Connect(t, regionSrv.ClientURL()), region.Config{Hub: "hub"}); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	m, err := region.NewMonitor(hubNC, kv.DefaultBucket, []string{"shanghai"}, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runMonitor(t, ctx, m)
	awaitLag(t, ctx, m, func(lag time.Duration) bool { return lag < 2*time.Second }, "under 2s while connected")

	relay.Cut()
	cut := time.Now()
	awaitLag(t, ctx, m, func(lag time.Duration) bool { return lag >= 3*time.Second }, "3s, cut off for longer")
	if lag := m.Lag("shanghai"); lag > time.Since(cut)+2*time.Second {
		t.Errorf("lag %s, cut off %s ago: more than the second or so it was behind before", lag, time.Since(cut))
	}
	relay.Heal()
	awaitLag(t, ctx, m, func(lag time.Duration) bool { return lag < 2*time.Second }, "under 2s once healed")

	families, err := reg.Gather()
	if err != nil || len(families) != 1 || families[0].GetName() != "wxtoken_region_lag_seconds" ||
		families[0].Metric[0].GetLabel()[0].GetValue() != "shanghai" {
		t.Errorf("metrics %v %v", families, err)
	}
}

func awaitLag(t *testing.T, ctx context.Context, m *region.Monitor, ok func(time.Duration) bool, want string) {
	t.Helper()
	for !ok(m.Lag("shanghai")) {
		select {
		case <-ctx.Done():
			t.Fatalf("lag %s, want %s", m.Lag("shanghai"), want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestMonitorPutsBackTheHubsConsumer: a copy follows a durable consumer of
// the hub's, which a deletion of the hub's bucket (repaired by the
// refresher) takes along. The hub's Monitor puts it back, and the copy
// holds the new bucket's values.
func TestMonitorPutsBackTheHubsConsumer(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := newWorld(t, ctx)
	put(t, ctx, w.hub, appA, "token-1")
	c, err := region.Add(ctx, w.regionNC, region.Config{Hub: "hub"})
	if err != nil || !c.Durable {
		t.Fatalf("copy %+v (%v), want one with a durable consumer", c, err)
	}
	hubNC := testenv.Connect(t, w.hubURL)
	hubJS, _ := jetstream.New(hubNC)
	if err := hubJS.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	// Made again as the refresher's repair does, retrying: the server may
	// refuse a stream of the name it has just deleted for a moment ("error
	// creating store for stream").
	var again jetstream.KeyValue
	for again == nil {
		again, err = bucket.Open(ctx, hubJS, bucket.Config{})
		if err != nil {
			select {
			case <-ctx.Done():
				t.Fatal(err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	rev := put(t, ctx, again, appA, "token-2")

	m, err := region.NewMonitor(hubNC, kv.DefaultBucket, []string{"shanghai"}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runMonitor(t, ctx, m)
	js, _ := jetstream.New(w.regionNC)
	copied, err := kv.Bind(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if e, err := copied.Get(ctx, appA); err == nil && e.Revision() == rev {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the copy never got the new bucket's revision %d", rev)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestServerVersions: the versions that tell what a region's NATS can do.
func TestServerVersions(t *testing.T) {
	for _, tc := range []struct {
		version      string
		major, minor int
		want         bool
	}{
		{"2.9.10", 2, 10, false}, {"2.10.0", 2, 10, true}, {"2.14.3", 2, 15, false}, {"2.15.2", 2, 15, true},
		{"3.0.0", 2, 15, true}, {"2.15.0-beta.1", 2, 15, true}, {"", 2, 10, false}, {"x.y", 2, 10, false},
	} {
		if got := region.AtLeast(tc.version, tc.major, tc.minor); got != tc.want {
			t.Errorf("%q at least %d.%d: %v", tc.version, tc.major, tc.minor, got)
		}
	}
}

// runMonitor runs m, asking every 100 ms, until the test ends.
func runMonitor(t *testing.T, ctx context.Context, m *region.Monitor) {
	region.SetMonitorEvery(m, 100*time.Millisecond)
	ctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
}
