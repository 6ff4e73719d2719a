package lease

import (
	"cmp"
	"slices"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Live returns the states of the replicas alive as this replica sees them
// (itself included once it published), by instance: for the status page.
func (p *Peers) Live() []kv.ReplicaState {
	p.mu.Lock()
	defer p.mu.Unlock()
	var live []kv.ReplicaState
	for _, o := range p.seen {
		if time.Since(o.seen) < p.ttl {
			live = append(live, o.state)
		}
	}
	slices.SortFunc(live, func(a, b kv.ReplicaState) int { return cmp.Compare(a.Instance, b.Instance) })
	return live
}
