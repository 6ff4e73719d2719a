package lease

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// testPeer is a replica's Peers with a state the test sets.
type testPeer struct {
	*Peers
	cannot   atomic.Int64
	standing atomic.Bool
	probing  atomic.Bool // its first round of probes is under way
	changed  chan struct{}
	stop     func()
}

// startPeer runs the Peers of instance, standing, cannot leading cannot
// apps, and probing if its first round of probes is under way.
func startPeer(t *testing.T, nc *nats.Conn, js jetstream.JetStream, instance string, cannot int, probing bool) *testPeer {
	t.Helper()
	p := &testPeer{changed: make(chan struct{}, 1)}
	p.cannot.Store(int64(cannot))
	p.standing.Store(true)
	p.probing.Store(probing)
	peers, err := OpenPeers(t.Context(), nc, js, PeersConfig{TokenBucket: kv.DefaultBucket, TTL: time.Second, Replicas: 1,
		Instance: instance, Logger: slog.New(slog.DiscardHandler), Changed: p.changed,
		State: func() kv.ReplicaState {
			s := kv.ReplicaState{Standing: p.standing.Load(), CannotLead: int(p.cannot.Load()), Probed: 30, Configured: 30}
			if p.probing.Load() {
				s.Probed = 2
			}
			return s
		}})
	if err != nil {
		t.Fatal(err)
	}
	p.Peers = peers
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { peers.Run(ctx) })
	p.stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(p.stop)
	return p
}

// set changes the peer's state and has it published at once.
func (p *testPeer) set(cannot int, standing bool) {
	p.cannot.Store(int64(cannot))
	p.standing.Store(standing)
	p.changed <- struct{}{}
}

// awaitBetter waits until p sees a better replica (want) or none.
func awaitBetter(t *testing.T, ctx context.Context, p *testPeer, want bool) kv.ReplicaState {
	t.Helper()
	for {
		updated := p.Updated()
		if best, ok := p.Better(); ok == want {
			return best
		}
		select {
		case <-updated:
		case <-ctx.Done():
			t.Fatalf("a better replica seen: never %v", want)
		}
	}
}

// TestPeersDeferToABetterReplicaOnlyWhileItStands: a replica that cannot
// lead an app defers to a live, standing replica that can lead more, and
// to no other: not alone, not to an equal or a worse one, not to one
// still starting; and no longer once the better one stopped (its key
// deleted) or died (its key not renewed for a TTL).
func TestPeersDeferToABetterReplicaOnlyWhileItStands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)

	bad := startPeer(t, nc, js, "bad", 1, false)
	<-bad.Synced()
	if best, ok := bad.Better(); ok {
		t.Fatalf("a lone replica defers to %+v: it must lead, whatever it cannot do", best)
	}

	good := startPeer(t, nc, js, "good", 0, false)
	if best := awaitBetter(t, ctx, bad, true); best.Instance != "good" || best.CannotLead != 0 {
		t.Errorf("the bad replica defers to %+v, want good", best)
	}
	<-good.Synced()
	if best, ok := good.Better(); ok {
		t.Errorf("the good replica defers to %+v, which can lead fewer apps", best)
	}

	good.set(1, true) // as bad as the other: nobody defers
	awaitBetter(t, ctx, bad, false)
	good.set(0, true)
	awaitBetter(t, ctx, bad, true)
	good.set(0, false) // better, but still starting: it could not take over yet
	awaitBetter(t, ctx, bad, false)
	good.set(0, true)
	awaitBetter(t, ctx, bad, true)

	good.stop() // a clean stop deletes its key: the bad one campaigns at once
	awaitBetter(t, ctx, bad, false)

	// A replica that dies leaves its key, renewed no more: deferred to
	// until it is a TTL old.
	b, err := js.KeyValue(ctx, kv.ReplicasBucket(kv.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, kv.ReplicaKey("dead"), kv.EncodeReplicaState(kv.ReplicaState{Instance: "dead", At: time.Now(), Standing: true})); err != nil {
		t.Fatal(err)
	}
	if best := awaitBetter(t, ctx, bad, true); best.Instance != "dead" {
		t.Errorf("deferring to %+v, want the replica that just wrote", best)
	}
	awaitBetter(t, ctx, bad, false)
}

// TestPeersDeferToNoReplicaStillProbing: a replica whose first round of
// probes is under way counts too few apps it cannot lead; nobody defers
// to it, the leader of the better count included, until it has judged
// every app. It may defer to a complete one itself.
func TestPeersDeferToNoReplicaStillProbing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)

	leader := startPeer(t, nc, js, "leader", 10, false)
	<-leader.Synced()
	starting := startPeer(t, nc, js, "starting", 0, true) // 2 apps judged of 30 so far
	<-starting.Synced()
	awaitBetter(t, ctx, starting, false) // the leader is worse than its count so far

	// The starting replica has published one state, incomplete: once the
	// leader has seen it, it must not defer.
	for seen := false; !seen; {
		updated := leader.Updated()
		leader.mu.Lock()
		_, seen = leader.seen[kv.ReplicaKey("starting")]
		leader.mu.Unlock()
		if seen {
			break
		}
		select {
		case <-updated:
		case <-ctx.Done():
			t.Fatal("the leader never saw the starting replica")
		}
	}
	if best, ok := leader.Better(); ok {
		t.Errorf("the leader defers to %+v, whose probes are under way", best)
	}

	starting.set(11, true) // it judged more: worse than the leader, which it defers to
	if best := awaitBetter(t, ctx, starting, true); best.Instance != "leader" {
		t.Errorf("the starting replica defers to %+v, want the leader", best)
	}
	starting.probing.Store(false)
	starting.set(0, true) // complete, and better: the leader defers now
	if best := awaitBetter(t, ctx, leader, true); best.Instance != "starting" {
		t.Errorf("the leader defers to %+v, want the replica now complete", best)
	}
}
