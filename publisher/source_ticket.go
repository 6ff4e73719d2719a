package publisher

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// ticketSource is GET /cgi-bin/ticket/getticket, called with the app's
// current access_token: the jsapi_ticket (type=jsapi) that signs
// wx.config, or the card api_ticket (type=wx_card). While a ticket is
// valid WeChat returns the same one, saying 7200 s each time, and a token
// rotation does not change it: a ticket's expiry is counted from when its
// value first appeared, and an answer repeating it writes nothing.
type ticketSource struct{ kind Ticket }

func (s ticketSource) api() string { return s.kind.kind() }

func (s ticketSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	q := url.Values{"access_token": {g.token}, "type": {string(s.kind)}}
	status, body, err := u.Get(ctx, "cgi-bin/ticket/getticket", q, g.token)
	if err != nil {
		return issuedValue{}, err
	}
	v, err := upstream.DecodeTicket(status, body, upstream.TicketCodes)
	return issuedValue{Issued: v}, upstream.ScrubErrMsg(err, g.token)
}

func (ticketSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

// checkable: getcallbackip takes tokens, not tickets.
func (ticketSource) checkable() bool { return false }

// repeated: WeChat gives the same ticket until it expires.
func (ticketSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

func (ticketSource) wecom() bool { return false }

// tokenFor returns the current token of p, the app a ticket is fetched
// with, and its revision: after the rotation of it under way, if any, and
// fetched first if there is none, so that no ticket is asked for with a
// token about to be replaced or already dead.
func (r *Refresher) tokenFor(t *term, p *credential) (kv.Credential, uint64, error) {
	now := r.cfg.Clock.now()
	p.mu.Lock()
	f, rec, rev := p.flight, p.validRecord(now), p.rev
	if f == nil && rec == nil && !now.Before(p.due(now)) {
		// One fetch of the token, shared with its own schedule; none
		// while it waits after a failure or a repeated answer.
		f, _ = r.startOrJoin(t, p, modeScheduled, kv.ReasonInitial)
	}
	p.mu.Unlock()
	if f == nil && rec != nil {
		return *rec, rev, nil
	}
	if f != nil {
		select {
		case <-f.done:
		case <-t.ctx.Done():
			return kv.Credential{}, 0, errEnding
		}
	}
	p.mu.Lock()
	rec, rev = p.validRecord(r.cfg.Clock.now()), p.rev
	until := p.retryAt
	p.mu.Unlock()
	if rec == nil {
		return kv.Credential{}, 0, &parentWaitError{parent: p.key, until: until}
	}
	return *rec, rev, nil
}

// parentWaitError is a fetch that needs its parent's token (a ticket's
// app, an authorizer's platform) while the parent has none: it waits,
// quietly, until the parent's next attempt or until the parent gets one
// (wakeChildren), whichever comes first. The parent's own failure is what
// is logged and announced.
type parentWaitError struct {
	parent string
	until  time.Time // the parent's next attempt; zero if not known
}

func (e *parentWaitError) Error() string {
	return fmt.Sprintf("publisher: %s has no valid access_token to fetch with", e.parent)
}

// waitForParent makes a, whose parent has no token, wait for it.
func (r *Refresher) waitForParent(a *credential, err *parentWaitError) {
	now := r.cfg.Clock.now()
	a.mu.Lock()
	a.failures++
	until := err.until
	if !until.After(now) {
		until = now.Add(retryDelay(a.failures, r.cfg.RetryBackoff, r.cfg.RetryBackoffMax))
	}
	a.retryAt, a.lastErr = until, err
	a.mu.Unlock()
	r.log.Debug("waiting for the token it is fetched with", "key", a.key, "parent", err.parent,
		"next_attempt", until.UTC().Format(time.RFC3339))
}

// wakeChildren lets the credentials fetched with p's token go at once,
// those that waited for p to get one, now that it has one.
func (r *Refresher) wakeChildren(t *term, p *credential) {
	for _, c := range r.apps.Load().children[p] {
		c.mu.Lock()
		var waiting *parentWaitError
		woken := errors.As(c.lastErr, &waiting)
		if woken {
			c.failures, c.retryAt, c.lastErr = 0, time.Time{}, nil
		}
		c.mu.Unlock()
		if woken {
			r.plan(t, c)
		}
	}
}

// renewToken sends p's token, which a ticket call refused at revision
// used, through the forced-refresh path a service's refresh request takes
// (checked with WeChat, then fetched, one flight for all), and returns the
// token after it.
func (r *Refresher) renewToken(t *term, p *credential, used uint64) (kv.Credential, uint64, error) {
	now := r.cfg.Clock.now()
	p.mu.Lock()
	var f *flight
	switch {
	case p.flight != nil:
		f = p.flight
	case p.rev != used: // replaced meanwhile
	case !p.lastForced.IsZero() && now.Sub(p.lastForced) < r.cfg.MinForceInterval:
		p.mu.Unlock()
		return kv.Credential{}, 0, fmt.Errorf("publisher: the ticket call refused the token of %s, which was force-refreshed %s ago; at most one per %s",
			p.key, elapsed(now.Sub(p.lastForced)), r.cfg.MinForceInterval)
	default:
		p.lastForced = now
		f, _ = r.startOrJoin(t, p, modeForced, kv.ReasonRequested)
	}
	p.mu.Unlock()
	if f != nil {
		r.log.Info("a ticket call refused the token; refreshing it", "appid", p.key, "revision", used)
		select {
		case <-f.done:
		case <-t.ctx.Done():
			return kv.Credential{}, 0, errEnding
		}
	}
	return r.tokenFor(t, p)
}
