package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// smallWorld is a hub with a leading refresher and one region with its
// copy of the bucket, joined through a relay: in process, for the tests
// that need no more.
type smallWorld struct {
	fake     *fakewechat.Server
	wechat   string // the fake's URL
	hubNC    *nats.Conn
	leader   *testenv.Running // hub-a, at the hub
	relay    *testenv.Proxy
	regionNC *nats.Conn
}

func startSmallWorld(t *testing.T, ctx context.Context) smallWorld {
	t.Helper()
	hub, leaf := testenv.HubNATS(t, "hub")
	hubNC := testenv.Connect(t, hub.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	leader := testenv.Refresher(t, hubNC, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url, Instance: "hub-a"})
	testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, hubNC), appA))
	relay := testenv.NewProxy(t, leaf)
	regionSrv := testenv.RegionNATS(t, "shanghai", strings.TrimPrefix(relay.URL(), "nats://"), "", "")
	testenv.AwaitLeaf(t, ctx, regionSrv)
	regionNC := testenv.Connect(t, regionSrv.ClientURL())
	if _, err := region.Add(ctx, regionNC, region.Config{Hub: "hub"}); err != nil {
		t.Fatal(err)
	}
	return smallWorld{fake: fake, wechat: url, hubNC: hubNC, leader: leader, relay: relay, regionNC: regionNC}
}

// TestRefresherInARegionWithoutItsDomainIsRefused: a refresher started
// against a region's NATS without --hub-domain would find the region's
// read-only copy where it expects the bucket, and a lease bucket of the
// region's own, where it would lead beside the hub's leader. It stops at
// once instead, saying which option it lacks, having created nothing in
// the region and called WeChat for nothing.
func TestRefresherInARegionWithoutItsDomainIsRefused(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := startSmallWorld(t, ctx)
	issued := w.fake.Issued(appA)
	r, err := publisher.New(w.regionNC, publisher.Config{Apps: []publisher.App{{AppID: appA, Secret: publisher.NewSecret("secret-of-" + appA)}},
		UpstreamURL: w.wechat, Instance: "region-s", Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	run, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = r.Run(run)
	if err == nil || run.Err() != nil || !strings.Contains(err.Error(), "--hub-domain hub") {
		t.Fatalf("Run returned %v; want at once an error naming --hub-domain hub", err)
	}
	js, _ := jetstream.New(w.regionNC)
	if _, err := js.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket)); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("the region has a lease bucket of its own: %v", err)
	}
	copied, err := js.Stream(ctx, "KV_"+kv.DefaultBucket)
	if err != nil || copied.CachedInfo().Config.Mirror == nil {
		t.Errorf("the region's copy is no copy any more: %v", err)
	}
	if w.fake.Issued(appA) != issued {
		t.Errorf("WeChat issued %d tokens, %d before the refresher in the region started", w.fake.Issued(appA), issued)
	}
}

// TestRefresherInARegionLeadsThroughTheHubsLease: a replica in a region,
// given the hub's domain, stands by behind the hub's leader, and when that
// one stops it takes the hub's lease and writes the hub's bucket, which
// the region's copy then holds.
func TestRefresherInARegionLeadsThroughTheHubsLease(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	w := startSmallWorld(t, ctx)
	standby := testenv.Refresher(t, w.regionNC, publisher.Config{Apps: []publisher.App{{AppID: appA, Secret: publisher.NewSecret("secret-of-" + appA)}},
		UpstreamURL: w.wechat, Instance: "region-s", JSDomain: "hub"})
	hubJS, _ := jetstream.New(w.hubNC)
	for standby.Ready() != nil { // standing by behind hub-a
		select {
		case <-ctx.Done():
			t.Fatalf("the replica in the region never stood by: %v", standby.Ready())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if standby.Leading() {
		t.Fatal("the replica in the region leads beside hub-a")
	}
	if err := w.leader.Stop(); err != nil {
		t.Fatal(err)
	}
	for leaseHolder(t, ctx, hubJS).Instance != "region-s" {
		select {
		case <-ctx.Done():
			t.Fatal("the replica in the region never took the hub's lease")
		case <-time.After(20 * time.Millisecond):
		}
	}
	copied := testenv.Entries(t, testenv.Bucket(t, ctx, w.regionNC), appA)
	held := testenv.Next(t, ctx, copied)
	if _, err := w.fake.Reject(appA); err != nil {
		t.Fatal(err)
	}
	reply := refreshAnswered(t, ctx, w.regionNC, appA, held.Revision())
	if !reply.Refreshed {
		t.Fatalf("refresh through the replica in the region: %+v", reply)
	}
	if e := testenv.Next(t, ctx, copied); e.Revision() != reply.Revision {
		t.Errorf("the region's copy got revision %d, the refresher answered %d", e.Revision(), reply.Revision)
	}
}
