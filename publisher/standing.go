package publisher

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/lease"
)

// A replica that cannot lead an app does not take the lease while one
// that can is alive: each replica publishes what its probes proved
// (probes.go) in the replicas bucket, and campaigns only while no live,
// standing replica that has probed every app can lead more apps; leading,
// it hands over to one that appears. The rule and why it never leaves the replicas leaderless are
// in internal/lease/peers.go.

// peersSyncWait bounds the wait for the replicas' states before a first
// campaign: a slow read costs a takeover that the rule undoes, not a
// refresher that does not start.
const peersSyncWait = 2 * time.Second

// startProbes runs the probes until the returned stop is called.
func (r *Refresher) startProbes(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.probes.run(ctx) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// standBy opens the replicas bucket and starts publishing this replica's
// state and following the others', on following. Without the bucket (a
// NATS user not allowed it, say) the replica neither publishes nor
// defers, as before there was a rule, and says so.
func (r *Refresher) standBy(ctx context.Context, l *lease.Lease, following *sync.WaitGroup) {
	peers, err := lease.OpenPeers(ctx, r.nc, r.js, lease.PeersConfig{
		TokenBucket: r.cfg.Bucket, TTL: l.TTL(), Replicas: r.cfg.Replicas, Instance: r.cfg.Instance, Logger: r.log,
		State: r.replicaState, Changed: r.probes.changed,
	})
	if err != nil {
		r.log.Error("this replica publishes no state and defers to no replica: give the refresher's NATS user the replicas bucket (see nats.conf)", "error", err)
		return
	}
	following.Go(func() { peers.Run(ctx) })
	t := time.NewTimer(peersSyncWait)
	defer t.Stop()
	select {
	case <-peers.Synced():
	case <-t.C:
	case <-ctx.Done():
	}
	r.peers = peers
	r.shownPeers.Store(peers)
}

// replicaState is what this replica publishes.
func (r *Refresher) replicaState() kv.ReplicaState {
	probed, configured, apps, cannot := r.probes.state()
	return kv.ReplicaState{Standing: r.campaigning.Load(), Leading: r.Leading(), Probed: probed, Configured: configured, CannotLead: cannot, Apps: apps}
}

// acquire campaigns for the lease while no better replica stands (see
// above), and waits while one does.
func (r *Refresher) acquire(ctx context.Context, l *lease.Lease) (*lease.Held, error) {
	if r.peers == nil {
		return l.Acquire(ctx)
	}
	for {
		if err := r.deferWhileBetter(ctx); err != nil {
			return nil, err
		}
		campaign, giveUp := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.untilBetter(campaign, func(kv.ReplicaState) { giveUp() })
		}()
		held, err := l.Acquire(campaign)
		giveUp()
		<-done
		if err == nil || ctx.Err() != nil {
			return held, err
		}
	}
}

// deferWhileBetter returns once no live replica can lead more apps than
// this one; an error if ctx ended first.
func (r *Refresher) deferWhileBetter(ctx context.Context) error {
	deferred := false
	for {
		updated := r.peers.Updated()
		best, ok := r.peers.Better()
		switch {
		case !ok && deferred:
			r.log.Info("campaigning: no live replica can lead more apps than this one")
			return nil
		case !ok:
			return nil
		case !deferred:
			r.log.Warn("standing by without campaigning: replica "+best.Instance+" can lead more apps (this replica cannot lead "+strconv.Itoa(r.replicaState().CannotLead)+"); it campaigns again once that replica is gone",
				"better", best.Instance, "its_cannot_lead", best.CannotLead)
			deferred = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-updated:
		}
	}
}

// untilBetter calls then, once, when a better replica stands, unless ctx
// ends first.
func (r *Refresher) untilBetter(ctx context.Context, then func(kv.ReplicaState)) {
	for {
		updated := r.peers.Updated()
		if best, ok := r.peers.Better(); ok {
			then(best)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-updated:
		}
	}
}

// whileBest returns the context of a term: it ends when a better replica
// stands, and the leader then hands the lease over (Run releases it) as a
// clean stop does.
func (r *Refresher) whileBest(ctx context.Context) (context.Context, context.CancelFunc) {
	term, end := context.WithCancel(ctx)
	if r.peers == nil {
		return term, end
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		r.untilBetter(term, func(best kv.ReplicaState) {
			r.log.Warn("handing the lease over to replica "+best.Instance+", which can lead more apps (this replica cannot lead "+strconv.Itoa(r.replicaState().CannotLead)+")",
				"better", best.Instance, "its_cannot_lead", best.CannotLead)
			end()
		})
	})
	return term, func() {
		end()
		wg.Wait()
	}
}
