package loop

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
	modeScheduled mode = iota // the value is due (or missing): fetch
	modeForced                // a service saw the current value rejected: check, then fetch
	modeChecked               // the guardian saw another party's fetch: check, then fetch; blame nobody
)

// fly runs the flight f of cr on the term, unless the term is ending; it
// reports whether it does. Callers hold cr.mu (see startOrJoin).
func (c *Credentials) fly(t *term, cr *credential, f *flight, m mode, reason string, base outcome) bool {
	return t.spawn(func() {
		var out outcome
		// The flight lands whatever happens in it, a panic included:
		// everyone waiting on it is answered and the credential can rotate
		// again.
		defer func() {
			if p := recover(); p != nil {
				c.logPanic(p)
				out = base
				out.err = errPanicked
				c.failed(cr, nil, errPanicked)
			}
			c.life.saw(out.rev)
			cr.land(f, out, c.windowOf(cr.id().src))
			c.afterLanding(t, cr, out)
		}()
		out = c.rotate(t, cr, m, reason, base)
	})
}

// afterLanding publishes what the bucket holds, plans the next rotation,
// and lets go the credentials that waited for this one's token; a key to
// remove for good (an authorizer that withdrew while its token was
// fetched) is removed instead.
func (c *Credentials) afterLanding(t *term, cr *credential, out outcome) {
	var removal Removal
	goes := false
	if r := cr.id().remover; r != nil && out.refreshed {
		removal, goes = r.Removal()
	}
	if !goes {
		c.announceStored(cr)
	}
	c.plan(t, cr)
	if out.rec != nil {
		c.wakeChildren(t, cr)
	}
	if goes {
		c.Remove(cr.key, removal)
	}
}

// rotate does the work of one flight: fetch a value and store it.
func (c *Credentials) rotate(t *term, cr *credential, m mode, reason string, base outcome) outcome {
	now := c.now()
	skip, pending, retryAt, lastErr := cr.begin(now)
	if skip {
		return base
	}
	if now.Before(retryAt) {
		base.err = &backoffError{until: retryAt, last: lastErr}
		return base
	}
	id := cr.id() // a reload may put another in place: this rotation keeps it
	// What the source holds to store (an authorizer's refresh token) goes
	// in before anything else is asked of WeChat with it.
	if err := c.save(t, id); err != nil {
		return c.notStored(t, cr, err, base)
	}
	if base.rev == 0 && pending == nil {
		// Nothing seen of this key (a credential just added, or its read
		// failed): the bucket may hold a valid value all the same, which a
		// fetch would kill. Fetch only if it surely does not.
		found, err := c.lookUp(t, cr.key)
		switch {
		case err != nil:
			if t.work.Err() != nil {
				base.err = ErrEnding
				return base
			}
			err = fmt.Errorf("publisher: cannot read the key before a first fetch: %w", err)
			c.failed(cr, nil, err)
			base.err = err
			return base
		case found != nil:
			return *found
		}
	}
	var rec kv.Credential
	var latency time.Duration
	if pending != nil && pending.ValidAt(now) {
		// A value fetched earlier but never stored is the newest WeChat
		// issued: store it, rather than fetch another, which would cost
		// quota and kill this one.
		rec = *pending
	} else {
		var early *outcome
		if rec, latency, early = c.fetch(t, cr, id, m, reason, base); early != nil {
			return *early
		}
	}
	data, err := kv.EncodeCredential(rec)
	if err != nil { // cannot happen: the upstream answer was validated
		base.err = err
		return base
	}
	if err := c.save(t, id); err != nil {
		return c.unstored(t, cr, rec, err, base)
	}
	rev, stored, ours, err := c.storeRepairing(t, cr, rec, data, base.rev)
	if err != nil {
		return c.unstored(t, cr, rec, fmt.Errorf("publisher: token fetched but not stored: %w", err), base)
	}
	cr.stored(nil)
	if !ours {
		// Another writer stored a value fetched after ours: it is the
		// valid one, and nothing of ours was written.
		return outcome{rev: rev, rec: &stored}
	}
	if r := id.remover; r == nil || isKept(r) {
		c.announce(cr, rev, rec, data)
	} // else a key that goes for good: removed once this flight lands, unannounced
	c.metrics.Rotation(cr.key, rec.Reason)
	msg, keyAttr := "token rotated", "appid"
	if cr.kind != kv.KindToken {
		msg, keyAttr = "ticket rotated", "key"
	}
	c.log.Info(msg, keyAttr, cr.key, "revision", rev, "reason", rec.Reason,
		"expires_at", rec.ExpiresAt.Format(time.RFC3339), "upstream_latency", latency.Round(time.Millisecond))
	return outcome{rev: rev, rec: &rec, refreshed: true}
}

func isKept(r Remover) bool {
	_, goes := r.Removal()
	return !goes
}

// save runs the source's Saver, if it has one, bounded by bucket.Timeout.
// The write goes on when the lease is lost: any replica may make it, and
// WeChat may already have ended what it replaces.
func (c *Credentials) save(t *term, id *identity) error {
	if id.saver == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.work), bucket.Timeout)
	defer cancel()
	return id.saver.Save(ctx)
}

// unstored ends a rotation whose value could not be written: the value is
// kept, to be written by the next rotation (after a backoff), or, if the
// term ended, by this replica between terms (StoreLeftovers). Dropping it
// would cost more than a fetch: WeChat ends the value in the bucket five
// minutes after this one was issued, and nobody else knows.
func (c *Credentials) unstored(t *term, cr *credential, rec kv.Credential, err error, base outcome) outcome {
	cr.keep(rec, false)
	if t.work.Err() != nil {
		c.log.Warn("token fetched but not stored before the leadership ended; it is stored once NATS answers, unless a newer one is",
			"key", cr.key, "fetched_at", rec.FetchedAt.Format(time.RFC3339Nano), "error", err)
	}
	return c.notStored(t, cr, err, base)
}

// notStored ends a rotation whose write failed: what it fetched is kept to
// be written by the next, which goes after a backoff.
func (c *Credentials) notStored(t *term, cr *credential, err error, base outcome) outcome {
	if t.work.Err() != nil {
		base.err = ErrEnding
		return base
	}
	c.failed(cr, nil, err)
	base.err = err
	return base
}

// fetch asks WeChat for a new value, unless a forced refresh finds the
// current one still works, the term is ending, or the lease might not
// cover the call: then early is the flight's outcome. An answer that
// repeats the value held is an outcome too, as its source says.
func (c *Credentials) fetch(t *term, cr *credential, id *identity, m mode, reason string, base outcome) (rec kv.Credential, latency time.Duration, early *outcome) {
	stop := func(err error) (kv.Credential, time.Duration, *outcome) {
		base.err = err
		return kv.Credential{}, 0, &base
	}
	held := base.rec
	if held != nil && !held.ValidAt(c.now()) {
		held = nil
	}
	verifiedDead := false
	var suspect *kv.Elsewhere // a token another party may have ended: see ledger.go
	if m != modeScheduled && held != nil && id.checker != nil {
		// One confused service must not invalidate everyone's value: ask
		// WeChat first. If the check itself fails, the rejection the
		// service saw is the better evidence, so rotate.
		checkStart := time.Now()
		valid, err := id.checker.Check(t.ctx, held.Value)
		c.metrics.UpstreamCall(cr.key, "check", checkResult(valid, err), time.Since(checkStart))
		switch {
		case err == nil && valid:
			c.log.Info("refresh request: WeChat says the token still works, not rotating",
				"appid", cr.key, "revision", base.rev, "reason", reason)
			return stop(nil)
		case err == nil:
			verifiedDead = true
			if m == modeForced { // modeChecked: the guardian already said whose doing it was
				suspect = c.suspect(t, cr, id, base.rev, *held)
			}
		case t.ctx.Err() == nil:
			c.log.Warn("refresh request: could not check the token, rotating", "appid", cr.key, "error", err)
		}
	}
	a := &Attempt{Key: cr.key, c: c, t: t, cr: cr, gen: cr.generation()}
	issued, err := c.fetchFrom(t, cr, id, a)
	if err != nil {
		return stop(err)
	}
	if suspect != nil && issued.Value != held.Value {
		c.blame(t, cr, *suspect)
	}
	if base.rec != nil && issued.Value == base.rec.Value {
		switch {
		case id.forcer != nil && m != modeScheduled && held != nil:
			// The API returns the value WeChat says is dead: only its
			// forced mode replaces it.
			if issued, err = id.forcer.Force(t.ctx, a, *held, verifiedDead); err != nil {
				c.failedUnlessDeclined(cr, a, err)
				return stop(err)
			}
			if issued.Value == held.Value {
				err := &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "a forced " + id.src.API() + " refresh returned the dead token again"}
				c.failed(cr, a, err)
				return stop(err)
			}
		case verifiedDead:
			// WeChat (or WeCom) says the token is dead and gives it
			// again: keeping it would tell services it still works.
			err := &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "WeChat says the token is dead and " + id.src.API() + " returned it again"}
			c.failed(cr, a, err)
			return stop(err)
		default:
			if askAgain, write := id.src.Repeated(*base.rec, c.window(id.src, base.rec.Lifetime()), c.now()); !write {
				c.quiet(cr, askAgain)
				return stop(nil)
			}
		}
	}
	if id.recorder != nil {
		rec = id.recorder.Record(a, issued)
	} else {
		rec = kv.NewCredential(cr.key, issued.Value, issued.ExpiresIn, issued.At)
	}
	rec.Reason = reason
	return rec, a.latency, nil
}

// fetchFrom makes the source's fetch: its step before, if any, then the
// call, with the parent's current token for a credential fetched with
// one. If WeChat refuses that token, the token goes through the
// forced-refresh path and the credential is asked for once more.
func (c *Credentials) fetchFrom(t *term, cr *credential, id *identity, a *Attempt) (upstream.Issued, error) {
	if id.preparer != nil {
		if err := id.preparer.BeforeFetch(t.work, a); err != nil {
			// Refused before any call: nothing waits for the pacer or
			// the lease.
			c.failedUnlessDeclined(cr, a, err)
			return upstream.Issued{}, err
		}
	}
	var used uint64
	if cr.parent != nil {
		token, rev, err := c.tokenFor(t, cr.parent)
		var waiting *parentWaitError
		switch {
		case errors.As(err, &waiting):
			c.waitForParent(cr, waiting)
			return upstream.Issued{}, err
		case err != nil:
			if !errors.Is(err, ErrEnding) {
				c.failed(cr, a, err)
			}
			return upstream.Issued{}, err
		}
		a.Token, used = token.Value, rev
	}
	issued, err := c.call(t, cr, id, a)
	if cr.parent == nil || upstream.ClassOf(err) != upstream.ClassToken {
		return issued, err
	}
	refused := err
	token, rev, err := c.renewToken(t, cr.parent, used)
	switch {
	case err != nil:
		if !errors.Is(err, ErrEnding) {
			c.failed(cr, a, err)
		}
		return upstream.Issued{}, err
	case rev == used:
		// The token was kept (WeChat says it works) or could not be
		// replaced: asking again with it would only be refused again.
		c.failed(cr, a, refused)
		return upstream.Issued{}, refused
	}
	a.Token = token.Value
	issued, err = c.call(t, cr, id, a)
	if upstream.ClassOf(err) == upstream.ClassToken {
		c.failed(cr, a, err) // refused again: retried with backoff
	}
	return issued, err
}

// call makes the source's fetch through callUpstream, and records its
// failure (but for a token refused, which the caller handles, and a call
// the source declined).
func (c *Credentials) call(t *term, cr *credential, id *identity, a *Attempt) (upstream.Issued, error) {
	var budget func() error
	if id.budgeter != nil {
		budget = func() error { return id.budgeter.Spend(a) }
	}
	issued, err := c.callUpstream(a, id.src.API(), budget, func(ctx context.Context) (upstream.Issued, error) {
		return id.src.Fetch(ctx, a)
	})
	if err == nil {
		return issued, nil
	}
	if upstream.ClassOf(err) != upstream.ClassToken {
		c.failedUnlessDeclined(cr, a, err)
	}
	return issued, err
}

// callUpstream makes one call to WeChat for a's credential through the
// pacer, once the lease is known to be held and if it surely covers the
// call, and counts it in the metrics under api. A failure while the term
// ends is ErrEnding. A call that issued a value leaves its latency in a,
// and the calls without an answer before it (see Attempt.IssuedFrom).
//
// budget, if not nil, runs once the call is sure to go: it counts the call
// against a budget (forced refreshes, WeCom's ticket limits), and an error
// from it stops the call.
func (c *Credentials) callUpstream(a *Attempt, api string, budget func() error, call func(context.Context) (upstream.Issued, error)) (upstream.Issued, error) {
	t, cr := a.t, a.cr
	if err := c.pacer.Wait(t.ctx); err != nil {
		return upstream.Issued{}, ErrEnding
	}
	// A fetch can outlast its timeout's start by the whole timeout, and a
	// request once sent cannot be taken back: none starts that the lease
	// might not cover, nor while it is in doubt.
	if !t.coversCall(c.cfg.UpstreamTimeout) {
		return upstream.Issued{}, ErrEnding
	}
	if budget != nil {
		if err := budget(); err != nil {
			return upstream.Issued{}, err
		}
	}
	// One time for the call, in the ledger and as what it fetches was
	// fetched at: the ledger tells a later call that ends the token from
	// its fetch by their seconds, and a fetched_at taken after the count's
	// round trip could fall in the second after the count (then the next
	// fetch, alone in that second, looked like none of ours, and the
	// token it ended was blamed on another party).
	at := c.now()
	if err := c.count(t, cr, api, at); err != nil {
		return upstream.Issued{}, err
	}
	// The count was a round trip to the bucket: the term may have ended,
	// or the lease come into doubt, meanwhile.
	if t.ctx.Err() != nil || !t.coversCall(c.cfg.UpstreamTimeout) {
		return upstream.Issued{}, ErrEnding
	}
	clock := time.Now() // latency on the monotonic clock, whatever Now says
	issued, err := call(t.work)
	issued.At = at
	latency := time.Since(clock)
	// Heard before the term's end is looked at: a call cut short by it
	// may have reached WeChat all the same.
	unanswered := cr.heard(at, err)
	if err != nil {
		if t.work.Err() != nil {
			return upstream.Issued{}, ErrEnding
		}
		c.metrics.UpstreamCall(cr.key, api, string(upstream.ClassOf(err)), latency)
		return upstream.Issued{}, err
	}
	c.metrics.UpstreamCall(cr.key, api, "ok", latency)
	a.latency, a.unanswered = latency, unanswered
	return issued, nil
}

// storeRepairing stores as store does, and repairs the bucket first when
// the write finds it gone or lands at a revision that went back (the
// bucket was created again under it, and services would ignore the
// write): the value, which has started the old one's countdown at WeChat,
// then goes in at once, past the revisions services hold.
func (c *Credentials) storeRepairing(t *term, cr *credential, rec kv.Credential, data []byte, baseRev uint64) (uint64, kv.Credential, bool, error) {
	known := cr.revision()
	rev, stored, ours, err := c.store(t.work, t.bucket, cr.key, rec, data, baseRev)
	// In one bucket revisions only grow: a write below one seen before
	// went to a bucket created again.
	wentBack := err == nil && rev < known
	if !wentBack && (err == nil || !bucket.MayBeGone(err)) {
		return rev, stored, ours, err
	}
	problem, looked := c.inspect(t.work)
	switch {
	case problem != nil:
		if err := c.repair(t, problem); err != nil {
			return 0, kv.Credential{}, false, err
		}
		return c.store(t.work, t.bucket, cr.key, rec, data, baseRev)
	case wentBack:
		return 0, kv.Credential{}, false, fmt.Errorf("publisher: written at revision %d, below the %d seen before (looked at the bucket: %v)",
			rev, known, looked)
	}
	return rev, stored, ours, err
}

// lookUp reads key and returns it as an outcome if it holds a valid value;
// nil if it holds none (missing, deleted, expired or undecodable), an
// error if it cannot be read.
func (c *Credentials) lookUp(t *term, key string) (*outcome, error) {
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	e, err := t.bucket.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	c.life.saw(e.Revision())
	rec, err := kv.DecodeCredential(key, e.Value())
	if err != nil || !rec.ValidAt(c.now()) {
		return nil, nil
	}
	return &outcome{rev: e.Revision(), rec: &rec}, nil
}

// store writes rec, encoded as data, to b with compare-and-swap on baseRev,
// the revision the rotation started from, within ctx and bucket.Timeout,
// and returns the revision and record the key holds afterwards. If the key
// moved meanwhile, the newer of the two values wins: the stored one (ours
// is false) if it was fetched no earlier than ours, otherwise ours,
// written over the revision found. A key found holding this very value
// holds ours: a write whose answer was lost, or one a repair carried over.
func (c *Credentials) store(ctx context.Context, b jetstream.KeyValue, key string, rec kv.Credential, data []byte, baseRev uint64) (rev uint64, stored kv.Credential, ours bool, err error) {
	c.life.writes.RLock()
	defer c.life.writes.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	rev, err = casPut(ctx, b, key, data, baseRev)
	if !bucket.IsConflict(err) {
		return rev, rec, err == nil, err
	}
	var found uint64
	e, err := b.Get(ctx, key)
	switch {
	case err == nil:
		found = e.Revision()
		theirs, derr := kv.DecodeCredential(key, e.Value())
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
	rev, err = casPut(ctx, b, key, data, found)
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
// no value. Both follow the successful write.
func (c *Credentials) announce(cr *credential, rev uint64, rec kv.Credential, data []byte) {
	cr.announcing(rev)
	c.publishValue(cr.key, rev, data)
	// A flush writes the new value to the server from this goroutine, now,
	// rather than when nats.go's flusher goroutine is next scheduled: a
	// rotation reaches services one wake-up sooner. Its answer only says
	// that the server has it; it is not worth waiting long for.
	c.cfg.Conn.FlushTimeout(valueFlushWait)
	appid, kind := kv.SplitKey(cr.key)
	ev, _ := json.Marshal(kv.RotationEvent{
		AppID: appid, Kind: kind, Revision: rev, FetchedAt: rec.FetchedAt, ExpiresAt: rec.ExpiresAt, Reason: rec.Reason,
	})
	if err := c.cfg.Conn.Publish(c.subjects.Rotated(cr.key), ev); err != nil {
		c.log.Warn("rotation event not published", "key", cr.key, "error", err)
	}
}

func (c *Credentials) publishValue(key string, rev uint64, data []byte) {
	if err := c.cfg.Conn.PublishMsg(kv.ValueMsg(c.subjects, key, rev, data)); err != nil {
		c.log.Warn("new value not published", "appid", key, "error", err)
	}
}

// announceStored publishes the value the bucket holds for the credential if
// this leader has not: one it did not write (an operator's put, another
// writer's newer value, a write whose answer was lost), or one a leader
// before it stored but died before announcing. Subscribers ignore
// revisions they hold, so a second announcement costs nothing. A rotation
// under way announces its own write when it lands.
func (c *Credentials) announceStored(cr *credential) {
	rev, rec, ok := cr.toAnnounce()
	if !ok {
		return
	}
	data, err := kv.EncodeCredential(rec)
	if err != nil {
		return
	}
	c.publishValue(cr.key, rev, data)
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
