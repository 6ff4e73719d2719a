// Package publisher is the central token server: it fetches each app's
// access_token from WeChat before it expires, stores it in the token bucket
// with compare-and-swap, announces every rotation, and answers refresh
// requests from services that saw a token rejected. Replicas elect one leader
// through a lease; only the leader talks to WeChat.
package publisher

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/kv"
)

// kvTimeout bounds one bucket operation.
const kvTimeout = 5 * time.Second

// Refresher keeps the tokens of its apps fresh in the token bucket.
type Refresher struct {
	cfg      Config
	schedule cron.Schedule
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects kv.Subjects
	upstream *upstreamClient
	pacer    *pacer
	log      *slog.Logger

	apps      atomic.Pointer[appSet]
	reloading sync.Mutex // one SetApps at a time
	secrets   secrets
	metrics   *metrics
	bucket    atomic.Pointer[jetstream.KeyValue] // once open

	life bucketLife // the token bucket's: see bucket.go

	term        atomic.Pointer[term] // the leadership term under way, if any
	leading     atomic.Bool
	waiting     atomic.Pointer[error] // why start-up is still retrying
	synced      atomic.Bool           // the token bucket has been read
	campaigning atomic.Bool           // Run is past start-up, leading or standing by
}

// New checks cfg and returns a refresher that uses nc. Run starts it.
func New(nc *nats.Conn, cfg Config) (*Refresher, error) {
	cfg, schedule, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// Asynchronous writes (a repair carrying values over) give up on an
	// acknowledgement that does not come, rather than wait forever.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(kvTimeout), jetstream.WithDefaultTimeout(requestTimeout))
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	upstream, err := newUpstreamClient(cfg.UpstreamURL, cfg.HTTPClient, cfg.UpstreamTimeout)
	if err != nil {
		return nil, err
	}
	r := &Refresher{
		cfg:      cfg,
		schedule: schedule,
		nc:       nc,
		js:       js,
		subjects: kv.Subjects{Prefix: cfg.SubjectPrefix},
		upstream: upstream,
		pacer:    newPacer(cfg.UpstreamRate),
		log:      cfg.Logger,
		life:     newBucketLife(),
	}
	set := &appSet{byID: make(map[string]*appState, len(cfg.Apps))}
	for _, app := range cfg.Apps {
		a := &appState{id: app.AppID, secret: app.Secret, src: sourceFor(app.TokenAPI)}
		set.byID[app.AppID] = a
		set.order = append(set.order, a)
	}
	r.apps.Store(set)
	r.secrets.add(cfg.Apps)
	r.metrics = newMetrics(cfg.Registerer, r)
	return r, nil
}

// appState is what the refresher knows about one app.
type appState struct {
	id string

	mu         sync.Mutex
	secret     Secret
	src        source      // how its token is fetched
	removed    bool        // by a reload: no longer refreshed
	rev        uint64      // newest revision of the key seen; 0 when there is none
	rec        *kv.Record  // the token at rev; nil when absent, deleted or undecodable
	refreshAt  time.Time   // when rec enters its refresh window, spread included
	flight     *flight     // the rotation under way, shared by all who need one
	lastForced time.Time   // start of the last forced refresh
	failures   int         // consecutive failed rotations (fetch or write)
	retryAt    time.Time   // no fetch before this, after a failure
	lastErr    error       // the failure that set retryAt
	pending    *kv.Record  // fetched but not stored yet: written before anything is fetched
	announced  uint64      // the newest revision this replica published on the Value subject
	timer      *time.Timer // wakes the app when it falls due
	timerAt    time.Time
	timerGen   uint64    // tells a stopped timer's late callback from the current one's
	quietUntil time.Time // WeChat answered with the token held: not asked again before this
}

// due is when the app next needs a fetch. Callers hold a.mu.
func (a *appState) due(now time.Time) time.Time {
	switch {
	case now.Before(a.retryAt):
		return a.retryAt
	case a.pending != nil, a.rec == nil || !a.rec.ValidAt(now):
		// A token fetched but not stored must reach the bucket: its fetch
		// will kill the one there.
		return now
	}
	return maxTime(a.refreshAt, a.quietUntil)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// validRecord returns the app's token if it has one that has not expired.
// Callers hold a.mu.
func (a *appState) validRecord(now time.Time) *kv.Record {
	if a.rec != nil && a.rec.ValidAt(now) {
		return a.rec
	}
	return nil
}

// setRecord records the token at rev. Callers hold a.mu.
func (r *Refresher) setRecord(a *appState, rev uint64, rec *kv.Record) {
	a.rev, a.rec = rev, rec
	if rec != nil {
		window := r.window(a.src, rec.Lifetime())
		a.refreshAt = rec.ExpiresAt.Add(-window - spreadOf(a.id, rev, window/5))
	}
}

// observe takes in an entry of the token bucket: the refresher's own writes
// coming back, and anything anyone else wrote.
func (r *Refresher) observe(e jetstream.KeyValueEntry) {
	defer func() {
		if p := recover(); p != nil {
			r.logPanic(p)
		}
	}()
	r.life.saw(e.Revision())
	a := r.app(e.Key())
	if a == nil {
		return // another deployment's app, or a reserved "<appid>.<kind>" key
	}
	a.mu.Lock()
	if e.Revision() <= a.rev {
		a.mu.Unlock()
		return
	}
	var rec *kv.Record
	if e.Operation() == jetstream.KeyValuePut {
		decoded, err := kv.DecodeFor(a.id, e.Value())
		if err != nil {
			r.log.Warn("token bucket holds an undecodable value; replacing it", "appid", a.id, "revision", e.Revision(), "error", err)
		} else {
			rec = &decoded
		}
	}
	t := r.term.Load()
	// On the leader, an older token over a newer one that is still valid
	// (a backup restored, a repair carrying old values over): the newer
	// one goes back in, as a token fetched but not stored, and the older
	// one is not announced.
	held := a.validRecord(r.cfg.Clock.now())
	older := t != nil && rec != nil && held != nil && rec.AccessToken != held.AccessToken && rec.FetchedAt.Before(held.FetchedAt)
	switch {
	case older && a.pending == nil:
		a.pending = held
		r.log.Warn("the token bucket holds an older token than the one known; writing the newer back",
			"appid", a.id, "revision", e.Revision())
	case a.pending != nil && rec != nil && !rec.FetchedAt.Before(a.pending.FetchedAt):
		a.pending = nil // the bucket holds it, or a newer one
	}
	r.setRecord(a, e.Revision(), rec)
	a.mu.Unlock()
	if t != nil {
		if !older {
			r.announceStored(a)
		}
		r.plan(t, a)
	}
}

// Leading reports whether this replica currently leads: whether it may
// call WeChat.
func (r *Refresher) Leading() bool { return r.leading.Load() }

func (r *Refresher) setLeading(leading bool) {
	r.leading.Store(leading)
	r.metrics.setLeading(leading)
}

// Ready says why the refresher cannot do its part yet, or nil: it is
// connected to NATS, has opened and read the token bucket, and leads or
// stands by. While start-up retries, it says what failed last.
func (r *Refresher) Ready() error {
	if st := r.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("publisher: NATS connection is %s", st)
	}
	if err := r.waiting.Load(); err != nil {
		return *err
	}
	if err := r.life.problem.Load(); err != nil {
		return *err
	}
	switch {
	case !r.synced.Load():
		return errors.New("publisher: the token bucket has not been read yet")
	case !r.campaigning.Load():
		return errors.New("publisher: not running")
	}
	return nil
}
