package loop

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// A term can end with values that only this replica holds: a value WeChat
// issued that could not be written before the lease was lost (NATS out of
// reach between WeChat's answer and the write), and what its source holds
// to store first (an authorizer's refresh token). The value must reach the
// bucket all the same: WeChat ends the one there five minutes after it
// issued this one, long before its recorded expiry, and the next leader,
// which sees nothing due, would not fetch. So between terms this replica
// stores them itself, as the rotation would have, until they are stored,
// the bucket holds a newer value, or they expire.
//
// A replica that no longer leads may write, because fencing is on the
// calls to WeChat, and this write cannot put back an older value. The
// value was fetched while this replica surely held the lease (a fetch
// starts only while the lease surely covers it), and a later leader took
// the lease only once it had lapsed on the server, after that fetch had
// ended. So every value a later leader fetches has a later fetched_at, by
// at least the lease margin, which bounds the clock skew between replicas
// that this tolerates. store keeps whichever of the two was fetched later,
// and its compare-and-swap lets the write land only over the value it
// decided on: never over a newer leader's, whichever writes first.

// leftoverRetry bounds the pause between attempts to store what a term
// left, while NATS answers but refuses; a reconnection ends the pause.
const (
	leftoverRetryMin = 100 * time.Millisecond
	leftoverRetryMax = 2 * time.Second
)

// StoreLeftovers stores in b what the last term left only in memory,
// trying again while NATS is out of reach, until nothing is left or ctx
// ends (the next term starts, and its rotations store what is left).
func (c *Credentials) StoreLeftovers(ctx context.Context, b jetstream.KeyValue) {
	nc := c.cfg.Conn
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	wait := leftoverRetryMin
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		// Writes made while NATS is out of reach would only queue up in
		// the connection's buffer.
		if nc.Status() == nats.CONNECTED && !c.storeLeftoversOnce(ctx, b) {
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
func (c *Credentials) storeLeftoversOnce(ctx context.Context, b jetstream.KeyValue) (left bool) {
	for _, cr := range c.list() {
		if ctx.Err() != nil {
			return true
		}
		if c.storeLeftover(ctx, b, cr) {
			left = true
		}
	}
	return left
}

// storeLeftover stores what cr's source holds and the value fetched but
// not stored, if any, in that order, as a rotation does, and reports
// whether one is still left.
func (c *Credentials) storeLeftover(ctx context.Context, b jetstream.KeyValue, cr *credential) (left bool) {
	id := cr.id()
	if id.saver != nil {
		attempt, cancel := context.WithTimeout(ctx, bucket.Timeout)
		err := id.saver.Save(attempt)
		cancel()
		if err != nil {
			return true
		}
	}
	rec, base, expired := cr.leftover(c.now())
	if expired != nil {
		c.log.Warn("a token fetched but never stored has expired", "key", cr.key,
			"fetched_at", expired.FetchedAt.Format(time.RFC3339Nano), "expires_at", expired.ExpiresAt.Format(time.RFC3339))
	}
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
	rev, stored, ours, err := c.store(ctx, b, cr.key, *rec, data, base)
	if err != nil {
		return true
	}
	c.life.saw(rev)
	cr.stored(rec)
	cr.wrote(rev, stored, c.windowOf(id.src))
	if !ours {
		return false // a newer value was there: WeChat ends ours
	}
	c.announce(cr, rev, *rec, data)
	c.metrics.Rotation(cr.key, rec.Reason)
	c.log.Info("token fetched before the leadership ended is stored", "key", cr.key, "revision", rev,
		"reason", rec.Reason, "fetched_at", rec.FetchedAt.Format(time.RFC3339Nano), "expires_at", rec.ExpiresAt.Format(time.RFC3339))
	return false
}
