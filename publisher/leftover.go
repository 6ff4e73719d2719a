package publisher

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// A term can end with values that only this replica holds: a token WeChat
// issued that could not be written before the lease was lost (NATS out of
// reach between WeChat's answer and the write), and an authorizer's
// refresh token. The token must reach the bucket all the same: WeChat ends
// the one there five minutes after it issued this one, long before its
// recorded expiry, and the next leader, which sees nothing due, would not
// fetch. So between terms this replica stores them itself, as the rotation
// would have, until they are stored, the bucket holds a newer token, or
// they expire.
//
// A replica that no longer leads may write, because fencing is on the
// calls to WeChat, and this write cannot put back an older token. The
// token was fetched while this replica surely held the lease (a fetch
// starts only while the lease surely covers it), and a later leader took
// the lease only once it had lapsed on the server, after that fetch had
// ended. So every token a later leader fetches has a later fetched_at, by
// at least the lease margin, which bounds the clock skew between replicas
// that this tolerates. store keeps whichever of the two was fetched later,
// and its compare-and-swap lets the write land only over the value it
// decided on: never over a newer leader's token, whichever writes first.

// leftoverRetry bounds the pause between attempts to store what a term
// left, while NATS answers but refuses; a reconnection ends the pause.
const (
	leftoverRetryMin = 100 * time.Millisecond
	leftoverRetryMax = 2 * time.Second
)

// storeLeftovers stores in b what the last term left only in memory,
// trying again while NATS is out of reach, until nothing is left or ctx
// ends (the next term starts, and its rotations store what is left).
func (r *Refresher) storeLeftovers(ctx context.Context, b jetstream.KeyValue) {
	reconnected := r.nc.StatusChanged(nats.CONNECTED)
	defer r.nc.RemoveStatusListener(reconnected)
	wait := leftoverRetryMin
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		// Writes made while NATS is out of reach would only queue up in
		// the connection's buffer.
		if r.nc.Status() == nats.CONNECTED && !r.storeLeftoversOnce(ctx, b) {
			return
		}
		pause.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			wait = leftoverRetryMin
		case <-pause.C:
			wait = min(2*wait, leftoverRetryMax)
		}
	}
}

// storeLeftoversOnce tries each credential once and reports whether
// anything is still left.
func (r *Refresher) storeLeftoversOnce(ctx context.Context, b jetstream.KeyValue) (left bool) {
	for _, a := range r.credentialList() {
		if ctx.Err() != nil {
			return true
		}
		if r.storeLeftover(ctx, b, a) {
			left = true
		}
	}
	return left
}

// storeLeftover stores a's refresh token and token fetched but not
// stored, if any, in that order, as a rotation does, and reports whether
// one is still left.
func (r *Refresher) storeLeftover(ctx context.Context, b jetstream.KeyValue, a *credential) (left bool) {
	if r.refreshLeft(a) {
		attempt, cancel := context.WithTimeout(ctx, bucket.Timeout)
		err := r.storeRefresh(attempt, a)
		cancel()
		if err != nil {
			return true
		}
	}
	rec, base := r.leftoverToken(a)
	if rec == nil {
		return false
	}
	data, err := kv.EncodeCredential(*rec)
	if err != nil { // cannot happen: it was encoded before it was left
		return false
	}
	// Compare-and-swap on the newest revision seen rather than the one the
	// rotation started from: a conflict makes store read the key and decide
	// by fetched_at either way, and a revision the follower has seen since
	// spares it the detour.
	rev, stored, ours, err := r.store(ctx, b, a.key, *rec, data, base)
	if err != nil {
		return true
	}
	r.life.saw(rev)
	a.mu.Lock()
	if a.pending == rec {
		a.pending = nil
	}
	a.failures, a.retryAt, a.lastErr = 0, time.Time{}, nil
	if rev > a.rev {
		r.setRecord(a, rev, &stored)
	}
	a.mu.Unlock()
	if !ours {
		return false // a newer token was there: WeChat ends ours
	}
	r.announce(a, rev, *rec, data)
	r.metrics.rotation(a.key, rec.Reason)
	r.log.Info("token fetched before the leadership ended is stored", "key", a.key, "revision", rev,
		"reason", rec.Reason, "fetched_at", rec.FetchedAt.Format(time.RFC3339Nano), "expires_at", rec.ExpiresAt.Format(time.RFC3339))
	return false
}

// refreshLeft reports whether a is an authorizer with a refresh token
// WeChat returned that is not stored yet.
func (r *Refresher) refreshLeft(a *credential) bool {
	if a.auth == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.auth.unsaved != nil
}

// leftoverToken returns a's token fetched but not stored, if it still
// should be, and the newest revision of the key seen. One the bucket has a
// newer token than, or that has expired, is dropped.
func (r *Refresher) leftoverToken(a *credential) (*kv.Credential, uint64) {
	a.mu.Lock()
	rec, rev := a.pending, a.rev
	expired := rec != nil && !rec.ValidAt(r.cfg.Clock.now())
	if a.pendingSuperseded() || expired {
		a.pending = nil
	}
	usable := a.pending != nil && !a.removed
	a.mu.Unlock()
	if expired {
		r.log.Warn("a token fetched but never stored has expired", "key", a.key,
			"fetched_at", rec.FetchedAt.Format(time.RFC3339Nano), "expires_at", rec.ExpiresAt.Format(time.RFC3339))
	}
	if !usable {
		return nil, 0
	}
	return rec, rev
}
