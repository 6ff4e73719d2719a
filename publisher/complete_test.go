package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// runReplica runs a refresher of apps named instance, whose calls to
// WeChat leave from addr, until the test ends; stop stops it cleanly.
func runReplica(t *testing.T, ctx context.Context, srv *server.Server, wechat, instance, addr string, apps []App) (r *Refresher, logs *awaitedLog, stop func()) {
	t.Helper()
	nc, _ := natstest.Connect(t, srv.ClientURL())
	logs = newAwaitedLog()
	r, err := New(nc, Config{Apps: apps, UpstreamURL: wechat, SourceAddr: addr,
		ProbeEvery: time.Hour, LeaseTTL: 2 * time.Second, UpstreamTimeout: time.Second, Instance: instance,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	run, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(run) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", instance, err)
			}
		})
	}
	t.Cleanup(stop)
	return r, logs, stop
}

// awaitReplicaState waits until the replicas bucket, which a replica
// already running made, holds a state of instance that done accepts, and
// returns it.
func awaitReplicaState(t *testing.T, ctx context.Context, js jetstream.JetStream, instance string, done func(kv.ReplicaState) bool) kv.ReplicaState {
	t.Helper()
	b, err := js.KeyValue(ctx, kv.ReplicasBucket(kv.DefaultBucket)) // a replica that campaigns made it
	if err != nil {
		t.Fatalf("no replicas bucket: %v", err)
	}
	w, err := b.Watch(ctx, kv.ReplicaKey(instance))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if s, err := kv.DecodeReplicaState(e.Value()); err == nil && done(s) {
				return s
			}
		case <-ctx.Done():
			t.Fatalf("replica %s never published the state awaited", instance)
		}
	}
}

// TestReplicaStillProbingIsNotDeferredTo is the review's reproduction: 30
// apps; the leader "good" cannot lead 10 of them; "bad", whose address no
// app whitelists, starts. While its first round of probes is under way its
// count is too low (it has judged few apps), and the leader used to hand
// it the lease at once. A replica is deferred to only once it has a
// verdict on every app: good never hands over, bad never leads, and once
// bad has probed them all it defers to good.
func TestReplicaStillProbingIsNotDeferredTo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const many, refusedToGood = 30, 10
	fake := fakewechat.New(fakewechat.Config{})
	var apps []App
	for i := range many {
		appid, secret := fmt.Sprintf("wxcomplete%08d", i), fmt.Sprintf("secret-of-app-%d", i)
		fake.AddApp(appid, secret)
		allowed := "127.0.0.2"
		if i < refusedToGood {
			allowed = "127.0.0.9" // nobody's
		}
		fake.SetWhitelist(appid, fakewechat.Whitelist{Allowed: []string{allowed}})
		apps = append(apps, App{AppID: appid, Secret: NewSecret(secret)})
	}
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv.ClientURL())

	good, goodLog, _ := runReplica(t, ctx, srv, wechat.URL, "good", "127.0.0.2", apps)
	goodLog.await(t, ctx, "became leader", 1)
	awaitReplicaState(t, ctx, js, "good", func(s kv.ReplicaState) bool { return s.Probed == many })

	bad, badLog, _ := runReplica(t, ctx, srv, wechat.URL, "bad", "127.0.0.3", apps)
	s := awaitReplicaState(t, ctx, js, "bad", func(s kv.ReplicaState) bool { return s.Probed == many })
	if s.CannotLead != many {
		t.Fatalf("bad cannot lead %d apps, want all %d", s.CannotLead, many)
	}
	badLog.await(t, ctx, "standing by without campaigning: replica good", 1)

	if strings.Contains(goodLog.String(), "handing the lease over") {
		t.Errorf("the better leader handed the lease over to a replica still probing:\n%s", leaseLines(goodLog.String()))
	}
	if strings.Contains(badLog.String(), "became leader") {
		t.Errorf("the worse replica led:\n%s", leaseLines(badLog.String()))
	}
	if !good.Leading() || bad.Leading() {
		t.Errorf("good leads %v, bad leads %v; want the good one alone", good.Leading(), bad.Leading())
	}
}

// leaseLines returns the lines of a log about the lease, without the
// probes' verdicts around them.
func leaseLines(log string) string {
	var lines []string
	for line := range strings.Lines(log) {
		if strings.Contains(line, "lease") || strings.Contains(line, "leader") || strings.Contains(line, "campaign") {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "")
}
