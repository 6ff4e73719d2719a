// Package publisher is the central token server: it fetches each app's
// access_token from WeChat (/cgi-bin/token or /cgi-bin/stable_token) before
// it expires, and the JS-SDK tickets fetched with it, stores each in the
// token bucket under its key with compare-and-swap, announces every
// rotation, and answers refresh requests from services that saw a value
// rejected. Replicas elect one leader through a lease; only the leader
// talks to WeChat.
//
// Each key is a credential (credential.go) with a source, the API that
// fetches it (source_token.go, source_stable.go, source_ticket.go); the
// loop that makes it due, fetches, stores and announces it is the same
// for every kind (schedule.go, rotate.go).
package publisher

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Refresher keeps the tokens of its apps fresh in the token bucket.
type Refresher struct {
	cfg      Config
	schedule cron.Schedule
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects kv.Subjects
	wechat   *upstream.Client // WeChat's API
	wecom    *upstream.Client // WeCom's
	pacer    *upstream.Pacer
	limits   hourlyLimits // WeCom's on tickets
	log      *slog.Logger

	apps       atomic.Pointer[credentialSet]
	reloading  sync.Mutex     // one change of the credentials at a time
	configured []App          // the apps of the last SetApps, under reloading
	tending    sync.Mutex     // one tending of the platform bucket at a time (tendPlatforms)
	background sync.WaitGroup // reads of the token bucket for credentials added (rebuild); Run waits for them
	secrets    secrets
	metrics    *metrics
	bucket     atomic.Pointer[jetstream.KeyValue] // once open

	platformBucket atomic.Pointer[jetstream.KeyValue] // once open; only with platforms
	platforms      *platforms
	crypters       atomic.Pointer[map[string]*wxcrypt.Crypter] // the platforms' pushes, by component appid
	replays        *replayGuard                                // the callbacks', shared by the replicas

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
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(bucket.Timeout), jetstream.WithDefaultTimeout(requestTimeout))
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	wechat, err := upstream.New(cfg.UpstreamURL, cfg.HTTPClient, cfg.UpstreamTimeout)
	if err != nil {
		return nil, err
	}
	wecom, err := upstream.New(cfg.WeComURL, cfg.HTTPClient, cfg.UpstreamTimeout)
	if err != nil {
		return nil, fmt.Errorf("publisher: WeCom: %w", err)
	}
	r := &Refresher{
		cfg:       cfg,
		schedule:  schedule,
		nc:        nc,
		js:        js,
		subjects:  kv.Subjects{Prefix: cfg.SubjectPrefix},
		wechat:    wechat,
		wecom:     wecom,
		pacer:     upstream.NewPacer(cfg.UpstreamRate),
		log:       cfg.Logger,
		life:      newBucketLife(),
		platforms: newPlatforms(),
		replays:   newReplayGuard(js, cfg),
	}
	if err := r.setCrypters(cfg.Apps); err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	r.configured = cfg.Apps
	r.apps.Store(newCredentialSet(cfg.Apps, nil, nil, r.log.Warn))
	r.secrets.add(cfg.Apps)
	r.metrics = newMetrics(cfg.Registerer, r)
	return r, nil
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
	a := r.credential(e.Key())
	if a == nil {
		return // another deployment's app, or a reserved "<appid>.<kind>" key
	}
	a.mu.Lock()
	if e.Revision() <= a.rev {
		a.mu.Unlock()
		return
	}
	var rec *kv.Credential
	if e.Operation() == jetstream.KeyValuePut {
		decoded, err := kv.DecodeCredential(a.key, e.Value())
		if err != nil {
			r.log.Warn("token bucket holds an undecodable value; replacing it", "appid", a.key, "revision", e.Revision(), "error", err)
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
	older := t != nil && rec != nil && held != nil && rec.Value != held.Value && rec.FetchedAt.Before(held.FetchedAt)
	switch {
	case older && a.pending == nil:
		a.pending = held
		r.log.Warn("the token bucket holds an older token than the one known; writing the newer back",
			"appid", a.key, "revision", e.Revision())
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
		if rec != nil {
			r.wakeChildren(t, a)
		}
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

// clientFor returns the client of the API src calls.
func (r *Refresher) clientFor(src source) *upstream.Client {
	if src.wecom() {
		return r.wecom
	}
	return r.wechat
}
