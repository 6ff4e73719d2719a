package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// mode is why a rotation runs.
type mode int

const (
	modeScheduled mode = iota // the token is due (or missing): fetch
	modeForced                // a service saw the current token rejected: check, then fetch
)

// flight is one rotation; everyone who needs it while it runs shares it.
type flight struct {
	from uint64 // the revision it replaces
	done chan struct{}
	out  outcome // set before done closes
}

// outcome is what a rotation left in the bucket.
type outcome struct {
	rev       uint64
	rec       *kv.Credential // nil when there is no valid token
	refreshed bool
	err       error
}

// startOrJoin returns the app's rotation under way, or starts one; started
// says which. Callers hold a.mu. It returns nil when the term is ending.
func (r *Refresher) startOrJoin(t *term, a *credential, m mode, reason string) (f *flight, started bool) {
	if a.flight != nil {
		return a.flight, false
	}
	if a.removed {
		return nil, false
	}
	f = &flight{from: a.rev, done: make(chan struct{})}
	base := outcome{rev: a.rev, rec: a.rec}
	if !t.spawn(func() { r.fly(t, a, f, m, reason, base) }) {
		return nil, false
	}
	a.flight = f
	return f, true
}

func (r *Refresher) fly(t *term, a *credential, f *flight, m mode, reason string, base outcome) {
	var out outcome
	// The flight lands whatever happens in it, a panic included: everyone
	// waiting on it is answered and the app can rotate again.
	defer func() {
		if p := recover(); p != nil {
			r.logPanic(p)
			out = base
			out.err = errPanicked
			r.failed(a, errPanicked, Secret{})
		}
		r.life.saw(out.rev)
		a.mu.Lock()
		if out.rev > a.rev {
			r.setRecord(a, out.rev, out.rec)
		}
		a.flight = nil
		a.mu.Unlock()
		f.out = out
		close(f.done)
		// An authorizer that withdrew while its token was fetched: the
		// token just stored goes too, and is never announced.
		withdrawn := a.auth != nil && out.refreshed && r.credential(a.key) != a
		if !withdrawn {
			r.announceStored(a)
		}
		r.plan(t, a)
		if out.rec != nil {
			r.wakeChildren(t, a)
		}
		if withdrawn {
			r.dropToken(t, a.key)
		}
	}()
	out = r.rotate(t, a, m, reason, base)
}

// rotate does the work of one flight: fetch a token and store it.
func (r *Refresher) rotate(t *term, a *credential, m mode, reason string, base outcome) outcome {
	now := r.cfg.Clock.now()
	a.mu.Lock()
	if a.pendingSuperseded() {
		// The rotation was for the token left to store alone unless the
		// newer one is due too.
		a.pending = nil
		if a.due(now).After(now) {
			a.mu.Unlock()
			return base
		}
	}
	retryAt, lastErr, pending := a.retryAt, a.lastErr, a.pending
	a.mu.Unlock()
	if now.Before(retryAt) {
		base.err = &backoffError{until: retryAt, last: lastErr}
		return base
	}
	// An authorizer's refresh token that WeChat returned goes in before
	// anything else is asked of WeChat with it.
	if err := r.saveRefresh(t, a); err != nil {
		return r.notStored(t, a, err, base)
	}
	if base.rev == 0 && pending == nil {
		// Nothing seen of this key (an app just added, or its read
		// failed): the bucket may hold a valid token all the same, which
		// a fetch would kill. Fetch only if it surely does not.
		found, err := r.lookUp(t, a.key)
		switch {
		case err != nil:
			if t.work.Err() != nil {
				base.err = errEnding
				return base
			}
			err = fmt.Errorf("publisher: cannot read the key before a first fetch: %w", err)
			r.failed(a, err, Secret{})
			base.err = err
			return base
		case found != nil:
			return *found
		}
	}
	var rec kv.Credential
	var latency time.Duration
	if pending != nil && pending.ValidAt(now) {
		// A token fetched earlier but never stored is the newest WeChat
		// issued: store it, rather than fetch another, which would cost
		// quota and kill this one.
		rec = *pending
	} else {
		var early *outcome
		if rec, latency, early = r.fetch(t, a, m, reason, base); early != nil {
			return *early
		}
	}
	data, err := kv.EncodeCredential(rec)
	if err != nil { // cannot happen: the upstream answer was validated
		base.err = err
		return base
	}
	if err := r.saveRefresh(t, a); err != nil {
		return r.unstored(t, a, rec, err, base)
	}
	rev, stored, ours, err := r.storeRepairing(t, a, rec, data, base.rev)
	if err != nil {
		return r.unstored(t, a, rec, fmt.Errorf("publisher: token fetched but not stored: %w", err), base)
	}
	a.mu.Lock()
	a.pending = nil
	a.failures, a.retryAt, a.lastErr = 0, time.Time{}, nil
	a.mu.Unlock()
	if !ours {
		// Another writer stored a token fetched after ours: it is the
		// valid one, and nothing of ours was written.
		return outcome{rev: rev, rec: &stored}
	}
	if a.auth == nil || r.credential(a.key) == a {
		r.announce(a, rev, rec, data)
	} // else an authorizer that withdrew meanwhile: its token is removed next, unannounced
	r.metrics.rotation(a.key, rec.Reason)
	if a.kind == kv.KindToken {
		r.log.Info("token rotated", "appid", a.key, "revision", rev, "reason", rec.Reason,
			"expires_at", rec.ExpiresAt.Format(time.RFC3339), "upstream_latency", latency.Round(time.Millisecond))
	} else {
		r.log.Info("ticket rotated", "key", a.key, "revision", rev, "reason", rec.Reason,
			"expires_at", rec.ExpiresAt.Format(time.RFC3339), "upstream_latency", latency.Round(time.Millisecond))
	}
	return outcome{rev: rev, rec: &rec, refreshed: true}
}

// unstored ends a rotation whose token could not be written: the token is
// kept, to be written by the next rotation (after a backoff), or, if the
// term ended, by this replica between terms (storeLeftovers). Dropping it
// would cost more than a fetch: WeChat ends the token in the bucket five
// minutes after this one was issued, and nobody else knows.
func (r *Refresher) unstored(t *term, a *credential, rec kv.Credential, err error, base outcome) outcome {
	a.mu.Lock()
	a.pending = &rec
	a.mu.Unlock()
	if t.work.Err() != nil {
		r.log.Warn("token fetched but not stored before the leadership ended; it is stored once NATS answers, unless a newer one is",
			"key", a.key, "fetched_at", rec.FetchedAt.Format(time.RFC3339Nano), "error", err)
	}
	return r.notStored(t, a, err, base)
}

// notStored ends a rotation whose write failed: what it fetched is kept to
// be written by the next, which goes after a backoff.
func (r *Refresher) notStored(t *term, a *credential, err error, base outcome) outcome {
	if t.work.Err() != nil {
		base.err = errEnding
		return base
	}
	r.failed(a, err, Secret{})
	base.err = err
	return base
}

// fetch asks WeChat for a new value, unless a forced refresh finds the
// current one still works, the term is ending, or the lease might not
// cover the call: then early is the flight's outcome. An answer that
// repeats the value held is an outcome too, as its source says.
func (r *Refresher) fetch(t *term, a *credential, m mode, reason string, base outcome) (rec kv.Credential, latency time.Duration, early *outcome) {
	stop := func(err error) (kv.Credential, time.Duration, *outcome) {
		base.err = err
		return kv.Credential{}, 0, &base
	}
	a.mu.Lock()
	secret, src := a.secret, a.src // a reload may change them
	a.mu.Unlock()
	held := base.rec
	if held != nil && !held.ValidAt(r.cfg.Clock.now()) {
		held = nil
	}
	verifiedDead := false
	if m == modeForced && held != nil && src.checkable() {
		// One confused service must not invalidate everyone's token: ask
		// WeChat first. If the check itself fails, the rejection the
		// service saw is the better evidence, so rotate.
		checkStart := time.Now()
		valid, err := r.clientFor(src).CheckToken(t.ctx, held.Value)
		r.metrics.upstreamCall(a.key, "check", checkResult(valid, err), time.Since(checkStart))
		switch {
		case err == nil && valid:
			r.log.Info("refresh request: WeChat says the token still works, not rotating",
				"appid", a.key, "revision", base.rev, "reason", reason)
			return stop(nil)
		case err == nil:
			verifiedDead = true
		case t.ctx.Err() == nil:
			r.log.Warn("refresh request: could not check the token, rotating", "appid", a.key, "error", err)
		}
	}
	issued, latency, err := r.fetchFrom(t, a, src, secret)
	if err != nil {
		return stop(err)
	}
	if base.rec != nil && issued.Value == base.rec.Value {
		stable, isStable := src.(stableSource)
		switch {
		case isStable && m == modeForced && held != nil:
			// stable_token returns the token WeChat says is dead: only a
			// forced refresh replaces it.
			if !verifiedDead {
				return stop(errNotVerified)
			}
			if issued, latency, err = r.forceStable(t, a, secret); err != nil {
				return stop(err)
			}
			if issued.Value == held.Value {
				err := &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "a forced " + stable.api() + " refresh returned the dead token again"}
				r.failed(a, err, secret)
				return stop(err)
			}
		case verifiedDead:
			// WeChat (or WeCom) says the token is dead and gives it
			// again: keeping it would tell services it still works.
			err := &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "WeChat says the token is dead and " + src.api() + " returned it again"}
			r.failed(a, err, secret)
			return stop(err)
		default:
			if askAgain, write := src.repeated(*base.rec, r.window(src, base.rec.Lifetime()), r.cfg.Clock.now()); !write {
				r.quiet(a, askAgain)
				return stop(nil)
			}
		}
	}
	rec = kv.NewCredential(a.key, issued.Value, issued.ExpiresIn, issued.At)
	if first, ok := r.firstAppearance(a, issued.Value); ok {
		// A WeCom corp has one jsapi ticket, kept under each of its apps
		// that asks for it: its expiry counts from when any first saw it.
		rec.FetchedAt, rec.ExpiresIn, rec.ExpiresAt = first.FetchedAt, first.ExpiresIn, first.ExpiresAt
	}
	rec.Reason = reason
	switch src.(type) {
	case stableSource:
		rec.API = kv.APIStableToken
	case wecomSource:
		rec.API = kv.APIWeCom
	}
	return rec, latency, nil
}

// fetchFrom makes the source's fetch. A ticket is fetched with the app's
// current token; if WeChat refuses that token, the token goes through the
// forced-refresh path and the ticket is asked for once more.
func (r *Refresher) fetchFrom(t *term, a *credential, src source, secret Secret) (issuedValue, time.Duration, error) {
	appid, _ := kv.SplitKey(a.key)
	if corpid, _, ok := kv.SplitWeComKey(a.key); ok {
		appid = corpid
	}
	if a.auth != nil {
		// The refresh token another leader stored may not have reached
		// this one's follower yet: asking with an older one would end the
		// newest.
		r.readRecord(t, a)
		a.mu.Lock()
		secret = a.secret
		a.mu.Unlock()
	}
	g := grant{appid: appid, secret: secret}
	r.grantFor(a, src, &g)
	var used uint64
	if a.parent != nil {
		token, rev, err := r.tokenFor(t, a.parent)
		var waiting *parentWaitError
		switch {
		case errors.As(err, &waiting):
			r.waitForParent(a, waiting)
			return issuedValue{}, 0, err
		case err != nil:
			if !errors.Is(err, errEnding) {
				r.failed(a, err, Secret{})
			}
			return issuedValue{}, 0, err
		}
		g.token, used = token.Value, rev
	}
	if _, ok := src.(componentSource); ok && g.ticket == "" {
		// No ticket, no call: nothing waits for the pacer or the lease.
		err := errNoTicket()
		r.ticketRefused(t, a, secret, "", err)
		return issuedValue{}, 0, err
	}
	var before func() error
	if _, ok := src.(wecomTicketSource); ok {
		before = func() error { return r.limits.take(a.key, r.cfg.Clock.now()) }
	}
	client := r.clientFor(src)
	call := func(ctx context.Context) (issuedValue, error) { return src.fetch(ctx, client, g) }
	issued, latency, err := r.callUpstream(t, a, src.api(), secret, before, call)
	var ue *upstream.Error
	switch {
	case err == nil:
		r.holdRefresh(a, issued, g.code)
	case upstream.ClassOf(err) == upstream.ClassTicket:
		r.ticketRefused(t, a, secret, g.ticket, err)
	case errors.As(err, &ue) && ue.ErrCode == upstream.CodeSpent && g.code != "":
		r.spendCode(t, a, g.code)
	}
	if a.parent == nil || upstream.ClassOf(err) != upstream.ClassToken {
		return issued, latency, err
	}
	refused := err
	token, rev, err := r.renewToken(t, a.parent, used)
	switch {
	case err != nil:
		if !errors.Is(err, errEnding) {
			r.failed(a, err, Secret{})
		}
		return issuedValue{}, 0, err
	case rev == used:
		// The token was kept (WeChat says it works) or could not be
		// replaced: asking again with it would only be refused again.
		r.failed(a, refused, Secret{})
		return issuedValue{}, 0, refused
	}
	g.token = token.Value
	issued, latency, err = r.callUpstream(t, a, src.api(), secret, before, call)
	if err == nil {
		r.holdRefresh(a, issued, g.code)
	}
	if upstream.ClassOf(err) == upstream.ClassToken {
		r.failed(a, err, Secret{}) // refused again: retried with backoff
	}
	return issued, latency, err
}

// ticketRefused records that a platform's component token could not be
// fetched for want of a verify ticket that works (used, "" when there was
// none), and asks WeChat to push one.
func (r *Refresher) ticketRefused(t *term, a *credential, secret Secret, used string, err error) {
	r.startPush(t, a, secret)
	r.failed(a, err, secret)
	if ticket, ok := r.platforms.ticket(a.key); ok && ticket.Ticket != used {
		// A push came in while the fetch was under way: the next
		// fetch, when this flight lands, takes it.
		a.mu.Lock()
		a.failures, a.retryAt, a.lastErr = 0, time.Time{}, nil
		a.mu.Unlock()
	}
}

// firstAppearance returns the record of another credential of the same
// WeCom corp and kind that holds value: a corp's jsapi ticket is one,
// kept under each of its apps that asks for it.
func (r *Refresher) firstAppearance(a *credential, value string) (kv.Credential, bool) {
	corpid, _, wecom := kv.SplitWeComKey(a.key)
	if !wecom || a.kind != kv.KindJSAPITicket {
		return kv.Credential{}, false
	}
	for _, c := range r.credentialList() {
		if other, _, ok := kv.SplitWeComKey(c.key); c == a || !ok || other != corpid || c.kind != a.kind {
			continue
		}
		c.mu.Lock()
		rec := c.rec
		c.mu.Unlock()
		if rec != nil && rec.Value == value {
			return *rec, true
		}
	}
	return kv.Credential{}, false
}

// callUpstream makes one call to WeChat through the pacer, once the lease
// is known to be held and if it surely covers the call, and records it: in
// the metrics under api, and as the credential's failure if it fails (but
// for a token refused and a platform without a ticket, which the caller
// handles, and WeChat's count of forced refreshes spent, which pauses
// nothing). A failure while the term ends is errEnding.
//
// before, if not nil, runs once the call is sure to go: it counts the call
// against a budget (forced refreshes, WeCom's ticket limits), and an error
// from it stops the call, as the credential's failure.
func (r *Refresher) callUpstream(t *term, a *credential, api string, secret Secret, before func() error, call func(context.Context) (issuedValue, error)) (issuedValue, time.Duration, error) {
	if err := r.pacer.Wait(t.ctx); err != nil {
		return issuedValue{}, 0, errEnding
	}
	// A fetch can outlast its timeout's start by the whole timeout, and a
	// request once sent cannot be taken back: none starts that the lease
	// might not cover, nor while it is in doubt.
	if !t.coversCall(r.cfg.UpstreamTimeout) {
		return issuedValue{}, 0, errEnding
	}
	if before != nil {
		if err := before(); err != nil {
			var spent *budgetError
			if !errors.As(err, &spent) {
				r.failed(a, err, Secret{})
			}
			return issuedValue{}, 0, err
		}
	}
	at := r.cfg.Clock.now()
	clock := time.Now() // latency on the monotonic clock, whatever Now says
	issued, err := call(t.work)
	issued.At = at
	latency := time.Since(clock)
	if err != nil {
		if t.work.Err() != nil {
			return issuedValue{}, 0, errEnding
		}
		class := upstream.ClassOf(err)
		r.metrics.upstreamCall(a.key, api, string(class), latency)
		if class != upstream.ClassToken && class != upstream.ClassTicket && !(api == "stable_token_force" && class == upstream.ClassQuota) {
			r.failed(a, err, secret)
		}
		return issuedValue{}, 0, err
	}
	r.metrics.upstreamCall(a.key, api, "ok", latency)
	return issued, latency, nil
}

// storeRepairing stores as store does, and repairs the bucket first when
// the write finds it gone or lands at a revision that went back (the
// bucket was created again under it, and services would ignore the
// write): the token, which has started the old one's countdown at WeChat,
// then goes in at once, past the revisions services hold.
func (r *Refresher) storeRepairing(t *term, a *credential, rec kv.Credential, data []byte, baseRev uint64) (uint64, kv.Credential, bool, error) {
	a.mu.Lock()
	known := a.rev
	a.mu.Unlock()
	rev, stored, ours, err := r.store(t.work, t.bucket, a.key, rec, data, baseRev)
	// In one bucket revisions only grow: a write below one seen before
	// went to a bucket created again.
	wentBack := err == nil && rev < known
	if !wentBack && (err == nil || !bucket.MayBeGone(err)) {
		return rev, stored, ours, err
	}
	problem, looked := r.inspect(t.work)
	switch {
	case problem != nil:
		if err := r.repair(t, problem); err != nil {
			return 0, kv.Credential{}, false, err
		}
		return r.store(t.work, t.bucket, a.key, rec, data, baseRev)
	case wentBack:
		return 0, kv.Credential{}, false, fmt.Errorf("publisher: written at revision %d, below the %d seen before (looked at the bucket: %v)",
			rev, known, looked)
	}
	return rev, stored, ours, err
}

// lookUp reads appid's key and returns it as an outcome if it holds a
// valid token; nil if it holds none (missing, deleted, expired or
// undecodable), an error if it cannot be read.
func (r *Refresher) lookUp(t *term, appid string) (*outcome, error) {
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	e, err := t.bucket.Get(ctx, appid)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	r.life.saw(e.Revision())
	rec, err := kv.DecodeCredential(appid, e.Value())
	if err != nil || !rec.ValidAt(r.cfg.Clock.now()) {
		return nil, nil
	}
	return &outcome{rev: e.Revision(), rec: &rec}, nil
}

// store writes rec, encoded as data, to b with compare-and-swap on baseRev,
// the revision the rotation started from, within ctx and bucket.Timeout, and
// returns the revision and record the key holds afterwards. If the key
// moved meanwhile, the newer of the two tokens wins: the stored one (ours
// is false) if it was fetched no earlier than ours, otherwise ours, written
// over the revision found. A key found holding this very token holds ours:
// a write whose answer was lost, or one a repair carried over.
func (r *Refresher) store(ctx context.Context, b jetstream.KeyValue, appid string, rec kv.Credential, data []byte, baseRev uint64) (rev uint64, stored kv.Credential, ours bool, err error) {
	r.life.writes.RLock()
	defer r.life.writes.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	rev, err = casPut(ctx, b, appid, data, baseRev)
	if !bucket.IsConflict(err) {
		return rev, rec, err == nil, err
	}
	var found uint64
	e, err := b.Get(ctx, appid)
	switch {
	case err == nil:
		found = e.Revision()
		theirs, derr := kv.DecodeCredential(appid, e.Value())
		switch {
		case derr != nil:
		case theirs.Value == rec.Value:
			return found, theirs, true, nil
		case !theirs.FetchedAt.Before(rec.FetchedAt):
			return found, theirs, false, nil
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, kv.Credential{}, false, err
	}
	rev, err = casPut(ctx, b, appid, data, found)
	return rev, rec, err == nil, err
}

// casPut creates the key when rev is 0 and updates revision rev otherwise.
func casPut(ctx context.Context, b jetstream.KeyValue, key string, data []byte, rev uint64) (uint64, error) {
	if rev == 0 {
		return b.Create(ctx, key, data)
	}
	return b.Update(ctx, key, data, rev)
}

// valueFlushWait bounds the wait for the server's answer to the flush
// after a new value.
const valueFlushWait = 250 * time.Millisecond

// announce publishes the new value on its Value subject, where subscribers
// take it in the moment it arrives, then the rotation event, which carries
// no token. Both follow the successful write.
func (r *Refresher) announce(a *credential, rev uint64, rec kv.Credential, data []byte) {
	key := a.key
	a.mu.Lock()
	a.announced = max(a.announced, rev)
	a.mu.Unlock()
	r.publishValue(key, rev, data)
	// A flush writes the new value to the server from this goroutine, now,
	// rather than when nats.go's flusher goroutine is next scheduled: a
	// rotation reaches services one wake-up sooner. Its answer only says
	// that the server has it; it is not worth waiting long for.
	r.nc.FlushTimeout(valueFlushWait)
	appid, kind := kv.SplitKey(key)
	ev, _ := json.Marshal(kv.RotationEvent{
		AppID: appid, Kind: kind, Revision: rev, FetchedAt: rec.FetchedAt, ExpiresAt: rec.ExpiresAt, Reason: rec.Reason,
	})
	if err := r.nc.Publish(r.subjects.Rotated(key), ev); err != nil {
		r.log.Warn("rotation event not published", "key", key, "error", err)
	}
}

func (r *Refresher) publishValue(appid string, rev uint64, data []byte) {
	if err := r.nc.PublishMsg(kv.ValueMsg(r.subjects, appid, rev, data)); err != nil {
		r.log.Warn("new value not published", "appid", appid, "error", err)
	}
}

// announceStored publishes the value the bucket holds for the app if this
// leader has not: one it did not write (an operator's put, another
// writer's newer token, a write whose answer was lost), or one a leader
// before it stored but died before announcing. Subscribers ignore
// revisions they hold, so a second announcement costs nothing. A rotation
// under way announces its own write when it lands.
func (r *Refresher) announceStored(a *credential) {
	a.mu.Lock()
	rev, rec := a.rev, a.rec
	announce := a.flight == nil && rec != nil && rev > a.announced
	if announce {
		a.announced = rev
	}
	a.mu.Unlock()
	if !announce {
		return
	}
	data, err := kv.EncodeCredential(*rec)
	if err != nil {
		return
	}
	r.publishValue(a.key, rev, data)
}
