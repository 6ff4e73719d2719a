package publisher

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// What the status page shows beyond the credentials, kept by every
// replica as it goes by: which apps' ledgers need a look, taken from the
// token bucket's follower (the loop ignores ledgers), and the last failure
// events, from the failed subjects.
//
// The ledgers themselves are not kept: 10,000 of them decoded take 11 MB
// (measured: two quota readings each), a fifth of a refresher's peak RSS
// with as many apps, and raw half of that; the page reads the ledgers of
// the apps it shows, at most pageSize Gets a load (page.go). What the
// summary over every app needs, whether a ledger records another party or
// a rescue, is a set of the few appids that do.

// maxFailuresShown is how many failure events the page keeps.
const maxFailuresShown = 20

// seen is what the page shows that the loop does not keep.
type seen struct {
	mu       sync.Mutex
	notable  map[string]bool     // appids whose ledger needs a look; only true values
	failures []shownFailure      // the newest last
	scrub    func(string) string // removes the secrets and values held
	changed  chan struct{}       // closed, and replaced, at each change
}

func newSeen(scrub func(string) string) *seen {
	return &seen{notable: map[string]bool{}, scrub: scrub, changed: make(chan struct{})}
}

// updated returns a channel closed at the next change, for those that
// wait for one.
func (s *seen) updated() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// change tells the waiters of updated. Under s.mu.
func (s *seen) change() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// observe takes in an entry of the token bucket, after the loop did: a
// ledger says whether its app needs a look; any entry is a change of what
// the page shows.
func (s *seen) observe(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.change()
	appid, ok := strings.CutSuffix(e.Key(), "."+kv.KindLedger)
	if !ok {
		return
	}
	delete(s.notable, appid)
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	if l, err := kv.DecodeLedger(appid, e.Value()); err == nil && needsLook(l) {
		s.notable[appid] = true
	}
}

// needsLook reports whether l records another party using the app's
// secret, or a rescue of its spent quota.
func needsLook(l kv.Ledger) bool {
	return l.Elsewhere != nil || l.Foreign != nil || l.Rescue != nil
}

// notableApps returns the appids whose ledger needs a look, sorted.
func (s *seen) notableApps() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.notable))
}

// shownFailure is a failure event kept for the page; clean once its
// errmsg was scrubbed.
type shownFailure struct {
	ev    kv.FailureEvent
	clean bool
}

// failed takes in a failure event.
func (s *seen) failed(m *nats.Msg) {
	var ev kv.FailureEvent
	if json.Unmarshal(m.Data, &ev) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.change()
	s.failures = append(s.failures, shownFailure{ev: ev})
	if over := len(s.failures) - maxFailuresShown; over > 0 {
		s.failures = slices.Delete(s.failures, 0, over)
	}
}

// lastFailures returns the failure events kept, the newest first. Their
// errmsg was scrubbed by the replica that published them; it is scrubbed
// again here, in case that replica was of a version that did not, or
// WeChat echoed a value it was sent. That is done once per event kept,
// when a page first shows it, not as events arrive: scrubbing looks at
// every secret and value held, and a storm of failures over 10,000 apps
// would cost that 10,000 times for the 20 kept.
func (s *seen) lastFailures() []kv.FailureEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]kv.FailureEvent, 0, len(s.failures))
	for i := range s.failures {
		f := &s.failures[i]
		if !f.clean {
			f.ev.ErrMsg, f.clean = s.scrub(f.ev.ErrMsg), true
		}
		out = append(out, f.ev)
	}
	slices.Reverse(out)
	return out
}

// followFailures subscribes to every app's failure events, on every
// replica, for the status page; the returned func unsubscribes. A
// subscription refused (a NATS user without the permission) costs the
// page its failures, nothing else.
func (r *Refresher) followFailures() func() {
	sub, err := r.nc.Subscribe(kv.Subjects{Prefix: r.cfg.SubjectPrefix}.Failed(">"), r.seen.failed)
	if err != nil {
		r.log.Warn("the status page will show no failures: cannot subscribe to them", "error", err)
		return func() {}
	}
	return func() { sub.Unsubscribe() }
}

// scrubShown removes from text the secrets this replica holds and the
// values of the credentials it holds.
func (r *Refresher) scrubShown(text string) string {
	text = r.apps.secrets.scrubber().Scrub(text)
	r.creds.Each(func(v loop.Value) {
		if v.Record != nil && v.Record.Value != "" {
			text = upstream.Scrub(text, v.Record.Value)
		}
	})
	return text
}
