// Package loop is the refresher's loop: for every credential, whatever
// its kind, it makes it due, fetches it through its source, stores it in
// the token bucket with compare-and-swap, announces it, and backs off
// when WeChat fails; it answers refresh requests, and keeps the bucket
// itself fit to write to. It is the one owner of each credential's state
// (credential.go, parents.go, demand.go and unanswered.go take its lock,
// and no other file or package), and it names no kind: a kind is a
// Source, and what differs by kind reaches the loop through the optional
// interfaces of source.go, asserted once.
//
// Reading order: loop.go (Credentials, Replace), credential.go and
// state.go (what the loop knows of a credential), term.go (Lead: a term
// of leadership), schedule.go (when a credential rotates), rotate.go (a
// rotation: fetch, store, announce; unanswered.go: what a call that got
// no answer may have issued), parents.go (credentials fetched with
// another's token, and their waiting for it), failure.go, endpoint.go and
// demand.go (refresh requests), ledger.go (each call counted before it
// goes; a token another party ended), then bucket.go, leftover.go and
// removal.go (the bucket's life around the rotations).
package loop

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/ledger"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Config is what the loop runs with; the refresher fills it from its own.
type Config struct {
	Conn   *nats.Conn
	JS     jetstream.JetStream
	Bucket bucket.Config // the token bucket, as a repair creates it again

	Schedule     cron.Schedule
	ScheduleSpec string // as configured, for the log

	RefreshBefore      time.Duration
	MinForceInterval   time.Duration
	UpstreamTimeout    time.Duration
	RetryBackoff       time.Duration
	RetryBackoffMax    time.Duration
	ConfigErrorBackoff time.Duration
	Pacer              *upstream.Pacer

	Instance string // in the refresh service's metadata
	Version  string // the refresh service's

	Now       func() time.Time
	AfterFunc func(time.Duration, func()) *time.Timer
	Logger    *slog.Logger
	Metrics   Metrics
	// Scrubber returns every secret the refresher was ever given, to keep
	// out of the text of a panic.
	Scrubber func() upstream.Scrubber
	// Duty, if set, runs on each term apart from the rotations (the quota
	// poller), until the context it is given ends with the term; its
	// calls to WeChat go through LeaderCall.
	Duty func(ctx context.Context)
	// FailureDetail, if set, is shown each failure event of a refused
	// fetch before it is published. It returns nil when it has nothing to
	// add, and the event goes at once; else a func that adds to it (what
	// WeChat's rid/get says of the call), waiting a short while at most,
	// which the loop runs in a goroutine of the term before it publishes
	// the event, so that no rotation waits for it. ctx ends with the
	// term's work.
	FailureDetail func(ev kv.FailureEvent) func(ctx context.Context, ev *kv.FailureEvent)
}

// Metrics is what the loop counts.
type Metrics interface {
	UpstreamCall(key, api, result string, took time.Duration)
	Rotation(key, reason string)
	Request(outcome string)
	Repaired()
	// Forget drops the series of a credential a reload removed.
	Forget(key, kind, api string)
	// InvalidatedElsewhere counts a token of key another party ended.
	InvalidatedElsewhere(key string)
	// QuotaRescue counts a rescue of appid's spent quota by its outcome,
	// under the reset it called ("none" for none); QuotaClearBudget shows
	// the resets of a budget wxtoken may still spend this month.
	QuotaRescue(appid, api, outcome string)
	QuotaClearBudget(appid, budget string, remaining int)
}

// Credentials is the set of credentials the refresher keeps fresh, and the
// loop that does it.
type Credentials struct {
	cfg      Config
	subjects kv.Subjects
	log      *slog.Logger
	metrics  Metrics
	pacer    *upstream.Pacer

	set       atomic.Pointer[set]
	bucket    atomic.Pointer[jetstream.KeyValue] // the token bucket, once open
	term      atomic.Pointer[term]               // the leadership term under way, if any
	life      bucketLife                         // the token bucket's: see bucket.go
	synced    atomic.Bool                        // the token bucket has been read
	removals  removals                           // keys to remove for good: see removal.go
	ledger    *ledger.Book                       // the apps' ledgers: see ledger.go
	uncounted uncounted                          // calls made but not counted yet: see ledger.go
}

// New returns the loop of no credentials; Replace gives it some.
func New(cfg Config) *Credentials {
	c := &Credentials{cfg: cfg, subjects: cfg.Bucket.Subjects, log: cfg.Logger, metrics: cfg.Metrics, pacer: cfg.Pacer,
		life: newBucketLife(), removals: removals{keys: map[string]*Removal{}}, ledger: ledger.New()}
	c.set.Store(&set{byKey: map[string]*credential{}})
	return c
}

func (c *Credentials) now() time.Time { return c.cfg.Now() }

// Desc describes a credential for Replace.
type Desc struct {
	Key    string
	Kind   string // kv.KindToken, or a ticket's kind
	Parent string // the key of the credential whose token it is fetched with; "" for none
	Source Source
	// Renewed says that what the fetch is made with changed since the
	// last Replace (a reload gave a new secret, or another API): the
	// credential takes Source, and keeps its state.
	Renewed bool
}

// Change is what Replace did.
type Change struct {
	Added, Removed, Renewed []string // keys
}

// set is the credentials at one time. It is immutable: Replace puts
// another in its place, so that readers need no lock.
type set struct {
	byKey    map[string]*credential
	order    []*credential                 // as described, each parent before what is fetched with it
	children map[*credential][]*credential // what is fetched with each token
}

func (c *Credentials) credential(key string) *credential { return c.set.Load().byKey[key] }

func (c *Credentials) list() []*credential { return c.set.Load().order }

// Has reports whether key is a credential of the set.
func (c *Credentials) Has(key string) bool { return c.credential(key) != nil }

// Valid returns the value held of key if it has not expired: what a
// replica, leader or not, may use the token for without fetching one (a
// login exchange with a platform's component token, say).
func (c *Credentials) Valid(key string) (kv.Credential, bool) {
	cr := c.credential(key)
	if cr == nil {
		return kv.Credential{}, false
	}
	if rec := cr.valid(c.now()); rec != nil {
		return *rec, true
	}
	return kv.Credential{}, false
}

// Len is the number of credentials.
func (c *Credentials) Len() int { return len(c.list()) }

// Replace puts the credentials descs describe in place of the ones before.
// A credential of the same key, kind and parent stays, with its state
// (taking its new Source when Renewed); the others are new. Removed ones
// are no longer refreshed, and their requests are answered unknown_app; a
// rotation under way for one still stores its value. On the leader, what
// is added or renewed is planned at once.
func (c *Credentials) Replace(descs []Desc) Change {
	old := c.set.Load()
	next := &set{byKey: make(map[string]*credential, len(descs)), children: map[*credential][]*credential{}}
	var ch Change
	for _, d := range descs {
		var parent *credential
		if d.Parent != "" {
			if parent = next.byKey[d.Parent]; parent == nil {
				continue // described before its parent: a bug, or a parent left out
			}
		}
		cr := old.byKey[d.Key]
		switch {
		case cr == nil || cr.kind != d.Kind || cr.parent != parent:
			cr = &credential{key: d.Key, kind: d.Kind, parent: parent}
			cr.ident.Store(newIdentity(d.Source))
		case d.Renewed:
			cr.renew(newIdentity(d.Source), c.windowOf(d.Source))
			ch.Renewed = append(ch.Renewed, d.Key)
		}
		if old.byKey[d.Key] != cr {
			ch.Added = append(ch.Added, d.Key)
		}
		next.byKey[d.Key] = cr
		next.order = append(next.order, cr)
		if parent != nil {
			next.children[parent] = append(next.children[parent], cr)
		}
	}
	// Out of the set first, so that no request finds them; then marked,
	// so that nothing armed before goes on.
	c.set.Store(next)
	for _, cr := range old.order {
		if next.byKey[cr.key] != cr {
			cr.remove()
			c.metrics.Forget(cr.key, cr.kind, cr.id().src.API())
			if next.byKey[cr.key] == nil {
				ch.Removed = append(ch.Removed, cr.key)
			}
		}
	}
	c.removals.cancel(ch.Added)
	if t := c.term.Load(); t != nil {
		for _, key := range append(ch.Added, ch.Renewed...) {
			cr := next.byKey[key]
			c.announceStored(cr)
			c.plan(t, cr)
		}
		if len(ch.Removed) > 0 {
			c.removeNow(t)
		}
	}
	return ch
}

// Renew tells the credential of key that what its fetch is made with
// changed (an authorizer's newer refresh token): a fetch refused with the
// one before may go at once.
func (c *Credentials) Renew(key string) {
	cr := c.credential(key)
	if cr == nil {
		return
	}
	cr.renew(nil, nil)
	if t := c.term.Load(); t != nil {
		c.plan(t, cr)
	}
}

// Retry lifts the pause of the credential of key if waiting matches the
// failure it waits after (a platform waiting for a verify ticket that just
// came), or the failure its rotation under way will record; it reports
// whether the credential waited.
func (c *Credentials) Retry(key string, waiting func(error) bool) bool {
	cr := c.credential(key)
	if cr == nil {
		return false
	}
	lifted := cr.retry(waiting)
	if t := c.term.Load(); t != nil {
		c.plan(t, cr)
	}
	return lifted
}

// Value is what the loop holds of a credential, for the metrics.
type Value struct {
	Key, Kind, Parent string
	API               string
	Record            *kv.Credential // nil when there is none
	Revision          uint64         // the bucket's revision of Record; 0 when there is none
}

// Each calls fn with every credential's value.
func (c *Credentials) Each(fn func(Value)) {
	for _, cr := range c.list() {
		rev, rec := cr.held()
		v := Value{Key: cr.key, Kind: cr.kind, API: cr.id().src.API(), Record: rec, Revision: rev}
		if cr.parent != nil {
			v.Parent = cr.parent.key
		}
		fn(v)
	}
}

// Leading reports whether a term is under way.
func (c *Credentials) Leading() bool { return c.term.Load() != nil }

// peers returns the records held of the credentials of cr's kind but cr.
func (c *Credentials) peers(cr *credential) []kv.Credential {
	var recs []kv.Credential
	for _, other := range c.list() {
		if other == cr || other.kind != cr.kind {
			continue
		}
		if rec := other.record(); rec != nil {
			recs = append(recs, *rec)
		}
	}
	return recs
}
