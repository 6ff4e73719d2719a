// Package publisher is the central token server: it fetches each app's
// access_token from WeChat before it expires, stores it in the token bucket
// with compare-and-swap, announces every rotation, and answers refresh
// requests from services that saw a token rejected. Replicas elect one leader
// through a lease; only the leader talks to WeChat.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"
	"golang.org/x/time/rate"

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
	upstream *Upstream
	pacer    *rate.Limiter
	log      *slog.Logger

	apps    map[string]*appState
	order   []*appState // apps in configuration order
	scrub   secretScrubber
	metrics *metrics

	term        atomic.Pointer[term] // the leadership term under way, if any
	leading     atomic.Bool
	synced      atomic.Bool // the token bucket has been read
	campaigning atomic.Bool // Run is past start-up, leading or standing by
}

// New checks cfg and returns a refresher that uses nc. Run starts it.
func New(nc *nats.Conn, cfg Config) (*Refresher, error) {
	cfg, schedule, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	upstream, err := NewUpstream(cfg.UpstreamURL, cfg.HTTPClient, cfg.UpstreamTimeout)
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
		// Burst 1: the rate is a ceiling in every second, not an average.
		// 1% under it, so that calls spaced exactly 1/rate apart, then
		// bunched by up to ~10ms on their way, never put rate+1 calls
		// into one second at WeChat.
		pacer: rate.NewLimiter(rate.Limit(cfg.UpstreamRate*0.99), 1),
		log:   cfg.Logger,
		apps:  make(map[string]*appState, len(cfg.Apps)),
	}
	for _, app := range cfg.Apps {
		a := &appState{id: app.AppID, secret: app.Secret}
		r.apps[app.AppID] = a
		r.order = append(r.order, a)
		r.scrub = append(r.scrub, app.Secret.Reveal())
	}
	r.metrics = newMetrics(cfg.Registerer, r)
	return r, nil
}

// appState is what the refresher knows about one app.
type appState struct {
	id     string
	secret Secret

	mu         sync.Mutex
	rev        uint64      // newest revision of the key seen; 0 when there is none
	rec        *kv.Record  // the token at rev; nil when absent, deleted or undecodable
	refreshAt  time.Time   // when rec enters its refresh window, spread included
	flight     *flight     // the rotation under way, shared by all who need one
	lastForced time.Time   // start of the last forced refresh
	failures   int         // consecutive failed fetches
	retryAt    time.Time   // no fetch before this, after a failure
	lastErr    error       // the failure that set retryAt
	timer      *time.Timer // wakes the app when it falls due between two ticks
	timerAt    time.Time
	timerGen   uint64 // tells a stopped timer's late callback from the current one's
}

// due is when the app next needs a fetch. Callers hold a.mu.
func (a *appState) due(now time.Time) time.Time {
	switch {
	case now.Before(a.retryAt):
		return a.retryAt
	case a.rec == nil || !a.rec.ValidAt(now):
		return now
	}
	return a.refreshAt
}

// validRecord returns the app's token if it has one that has not expired.
// Callers hold a.mu.
func (a *appState) validRecord(now time.Time) *kv.Record {
	if a.rec != nil && a.rec.ValidAt(now) {
		return a.rec
	}
	return nil
}

// mode is why a rotation runs.
type mode int

const (
	modeScheduled mode = iota // the token is due (or missing): fetch
	modeForced                // a service saw the current token rejected: check, then fetch
)

// flight is one rotation; everyone who needs it while it runs shares it.
type flight struct {
	done chan struct{}
	out  outcome // set before done closes
}

// outcome is what a rotation left in the bucket.
type outcome struct {
	rev       uint64
	rec       *kv.Record // nil when there is no valid token
	refreshed bool
	err       error
}

// startOrJoin returns the app's rotation under way, or starts one; started
// says which. Callers hold a.mu. It returns nil when the term is ending.
func (r *Refresher) startOrJoin(t *term, a *appState, m mode, reason string) (f *flight, started bool) {
	if a.flight != nil {
		return a.flight, false
	}
	f = &flight{done: make(chan struct{})}
	base := outcome{rev: a.rev, rec: a.rec}
	if !t.spawn(func() { r.fly(t, a, f, m, reason, base) }) {
		return nil, false
	}
	a.flight = f
	return f, true
}

func (r *Refresher) fly(t *term, a *appState, f *flight, m mode, reason string, base outcome) {
	var out outcome
	// The flight lands whatever happens in it, a panic included: everyone
	// waiting on it is answered and the app can rotate again.
	defer func() {
		if p := recover(); p != nil {
			r.logPanic(p)
			out = base
			out.err = errPanicked
			r.failed(a, errPanicked)
		}
		a.mu.Lock()
		if out.rev > a.rev {
			r.setRecord(a, out.rev, out.rec)
		}
		a.flight = nil
		a.mu.Unlock()
		f.out = out
		close(f.done)
		r.plan(t, a)
	}()
	out = r.rotate(t, a, m, reason, base)
}

// rotate does the work of one flight: fetch a token and store it.
func (r *Refresher) rotate(t *term, a *appState, m mode, reason string, base outcome) outcome {
	a.mu.Lock()
	retryAt, lastErr := a.retryAt, a.lastErr
	a.mu.Unlock()
	if now := r.cfg.Clock.now(); now.Before(retryAt) {
		base.err = &backoffError{until: retryAt, last: lastErr}
		return base
	}
	if m == modeForced && base.rec != nil && base.rec.ValidAt(r.cfg.Clock.now()) {
		// One confused service must not invalidate everyone's token: ask
		// WeChat first. If the check itself fails, the rejection the
		// service saw is the better evidence, so rotate.
		checkStart := time.Now()
		valid, err := r.upstream.CheckToken(t.ctx, base.rec.AccessToken)
		r.metrics.upstreamCall(a.id, "check", checkResult(valid, err), time.Since(checkStart))
		switch {
		case err == nil && valid:
			r.log.Info("refresh request: WeChat says the token still works, not rotating",
				"appid", a.id, "revision", base.rev, "reason", reason)
			return base
		case err != nil && t.ctx.Err() == nil:
			r.log.Warn("refresh request: could not check the token, rotating", "appid", a.id, "error", err)
		}
	}
	if err := r.pacer.Wait(t.ctx); err != nil {
		base.err = errEnding
		return base
	}
	start := r.cfg.Clock.now()
	clock := time.Now() // latency on the monotonic clock, whatever Now says
	fetched, err := r.upstream.FetchToken(t.work, a.id, a.secret)
	latency := time.Since(clock)
	if err != nil {
		if t.work.Err() != nil {
			base.err = errEnding
			return base
		}
		r.metrics.upstreamCall(a.id, "token", string(classOf(err)), latency)
		r.failed(a, err)
		base.err = err
		return base
	}
	r.metrics.upstreamCall(a.id, "token", "ok", latency)
	rec := kv.NewRecord(a.id, fetched.AccessToken, fetched.ExpiresIn, start)
	rec.Reason = reason
	rev, stored, ours, err := r.store(t, a.id, rec, base.rev)
	if err != nil {
		r.log.Error("token fetched but not stored", "appid", a.id, "error", err)
		base.err = err
		return base
	}
	a.mu.Lock()
	a.failures, a.retryAt, a.lastErr = 0, time.Time{}, nil
	a.mu.Unlock()
	if !ours {
		// Another writer stored a token fetched after ours: it is the
		// valid one, and nothing of ours was written.
		return outcome{rev: rev, rec: &stored}
	}
	r.announce(a.id, rev, rec, reason)
	r.metrics.rotated.WithLabelValues(a.id, reason).Inc()
	r.log.Info("token rotated", "appid", a.id, "revision", rev, "reason", reason,
		"expires_at", rec.ExpiresAt.Format(time.RFC3339), "upstream_latency", latency.Round(time.Millisecond))
	return outcome{rev: rev, rec: &rec, refreshed: true}
}

// store writes rec with compare-and-swap on baseRev, the revision the
// rotation started from, and returns the revision and record the key holds
// afterwards. If the key moved meanwhile, the newer of the two tokens wins:
// the stored one (ours is false) if it was fetched no earlier than ours,
// otherwise ours, written over the revision found.
func (r *Refresher) store(t *term, appid string, rec kv.Record, baseRev uint64) (rev uint64, stored kv.Record, ours bool, err error) {
	data, err := kv.Encode(rec)
	if err != nil {
		return 0, kv.Record{}, false, err
	}
	ctx, cancel := context.WithTimeout(t.work, kvTimeout)
	defer cancel()
	rev, err = casPut(ctx, t.bucket, appid, data, baseRev)
	if !isConflict(err) {
		return rev, rec, err == nil, err
	}
	var found uint64
	e, err := t.bucket.Get(ctx, appid)
	switch {
	case err == nil:
		found = e.Revision()
		if theirs, derr := kv.DecodeFor(appid, e.Value()); derr == nil && !theirs.FetchedAt.Before(rec.FetchedAt) {
			return found, theirs, false, nil
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, kv.Record{}, false, err
	}
	rev, err = casPut(ctx, t.bucket, appid, data, found)
	return rev, rec, err == nil, err
}

// casPut creates the key when rev is 0 and updates revision rev otherwise.
func casPut(ctx context.Context, b jetstream.KeyValue, key string, data []byte, rev uint64) (uint64, error) {
	if rev == 0 {
		return b.Create(ctx, key, data)
	}
	return b.Update(ctx, key, data, rev)
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// announce publishes the new value on its Value subject, where subscribers
// take it in the moment it arrives, then the rotation event, which carries
// no token. Both follow the successful write.
func (r *Refresher) announce(appid string, rev uint64, rec kv.Record, reason string) {
	if data, err := kv.Encode(rec); err == nil {
		if err := r.nc.PublishMsg(kv.ValueMsg(r.subjects, appid, rev, data)); err != nil {
			r.log.Warn("new value not published", "appid", appid, "error", err)
		}
	}
	ev, _ := json.Marshal(kv.RotationEvent{
		AppID: appid, Revision: rev, FetchedAt: rec.FetchedAt, ExpiresAt: rec.ExpiresAt, Reason: reason,
	})
	if err := r.nc.Publish(r.subjects.Rotated(appid), ev); err != nil {
		r.log.Warn("rotation event not published", "appid", appid, "error", err)
	}
}

// failed records a failed fetch and decides when the next may happen.
func (r *Refresher) failed(a *appState, err error) {
	class := classOf(err)
	var ue *UpstreamError
	errors.As(err, &ue)
	now := r.cfg.Clock.now()
	a.mu.Lock()
	a.failures++
	var wait time.Duration
	switch class {
	case ClassConfig:
		wait = r.cfg.ConfigErrorBackoff
	case ClassQuota:
		// All apps resume at midnight; the pacer spreads them.
		wait = untilQuotaReset(now)
	default:
		wait = retryDelay(a.failures, r.cfg.RetryBackoff, r.cfg.RetryBackoffMax)
	}
	a.retryAt, a.lastErr = now.Add(wait), err
	failures := a.failures
	a.mu.Unlock()

	if class == ClassRetry {
		r.log.Warn("token fetch failed, will retry", "appid", a.id, "error", err,
			"failures", failures, "retry_in", wait.Round(time.Millisecond))
		return
	}
	r.log.Error("token fetch refused: "+ue.Meaning(), "appid", a.id, "errcode", ue.ErrCode,
		"errmsg", ue.ErrMsg, "class", string(class), "next_attempt", now.Add(wait).Format(time.RFC3339))
	ev, _ := json.Marshal(kv.FailureEvent{
		AppID: a.id, ErrCode: ue.ErrCode, ErrMsg: ue.ErrMsg, Class: string(class), NextAttempt: now.Add(wait).UTC(),
	})
	if err := r.nc.Publish(r.subjects.Failed(a.id), ev); err != nil {
		r.log.Warn("failure event not published", "appid", a.id, "error", err)
	}
}

// backoffError answers a fetch asked for while the app waits after a failure.
type backoffError struct {
	until time.Time
	last  error
}

func (e *backoffError) Error() string {
	return fmt.Sprintf("publisher: no fetch before %s after: %v", e.until.UTC().Format(time.RFC3339), e.last)
}

func (e *backoffError) Unwrap() error { return e.last }

// errEnding answers what the ending of a leadership term cut short.
var errEnding = errors.New("publisher: refresher is stopping or lost its leadership")

// errPanicked is the outcome of a rotation that panicked.
var errPanicked = errors.New("publisher: rotation failed with a panic (logged)")

// setRecord records the token at rev. Callers hold a.mu.
func (r *Refresher) setRecord(a *appState, rev uint64, rec *kv.Record) {
	a.rev, a.rec = rev, rec
	if rec != nil {
		window := r.window(rec.Lifetime())
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
	a := r.apps[e.Key()]
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
	r.setRecord(a, e.Revision(), rec)
	a.mu.Unlock()
	if t := r.term.Load(); t != nil {
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
// connected to NATS, has read the token bucket, and leads or stands by.
func (r *Refresher) Ready() error {
	switch {
	case r.nc.Status() != nats.CONNECTED:
		return fmt.Errorf("publisher: NATS connection is %s", r.nc.Status())
	case !r.synced.Load():
		return errors.New("publisher: the token bucket has not been read yet")
	case !r.campaigning.Load():
		return errors.New("publisher: not running")
	}
	return nil
}

// secretScrubber removes every AppSecret from a text. It guards the one
// thing no type can keep a secret out of: the text of a panic.
type secretScrubber []string

func (s secretScrubber) scrub(text string) string {
	for _, secret := range s {
		if strings.Contains(text, secret) {
			text = scrub(text, secret)
		}
	}
	return text
}

// logPanic logs a recovered panic and its stack, scrubbed of secrets.
func (r *Refresher) logPanic(p any) {
	r.log.Error("recovered from a panic", "panic", r.scrub.scrub(fmt.Sprint(p)),
		"stack", r.scrub.scrub(string(debug.Stack())))
}

// classOf is the class of a failed fetch; failures that are not WeChat's
// answers (a panic, say) are transient.
func classOf(err error) Class {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue.Class
	}
	return ClassRetry
}

func checkResult(valid bool, err error) string {
	switch {
	case err != nil:
		return "error"
	case valid:
		return "valid"
	}
	return "invalid"
}
