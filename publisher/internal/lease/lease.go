// Package lease is the refresher's leadership: one replica at a time holds
// the lease and may call WeChat (Acquire), for as long as it renews it; the
// fence (Held.Covers) lets no call start that the lease might not cover,
// nor while it is in doubt. It knows nothing of tokens: the refresher's
// loop runs a term while it holds a lease, and ends it when Lost closes.
// Peers (peers.go) are the replicas' published states, by which a replica
// that could lead fewer apps than another does not campaign.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
)

// The leader lease is the key "leader" in the bucket "<token bucket>_leader",
// a bucket whose MaxAge is the lease TTL. Every renewal is a compare-and-swap
// Update, which writes a new message; the server removes a message MaxAge
// after it stored it. So a lease that is not renewed lapses by itself, on
// any nats-server with JetStream: kv.Update carries no per-key TTL (nats.go
// issue 1994), and per-message TTLs need nats-server 2.11, newer than some
// distributions ship.
//
// The leader counts its lease from the moment it sent the renewal, which is
// before the server stamped it, minus a margin: it steps down before the
// server can let another replica take over.

// Config is how a replica takes part in the election.
type Config struct {
	TokenBucket     string        // the lease bucket is kv.LeaseBucket(TokenBucket)
	TTL             time.Duration // how long a lease lasts without renewal, for a bucket this creates
	UpstreamTimeout time.Duration // the longest call to WeChat: a lease must last twice as long
	Replicas        int           // of the lease bucket, for a bucket this creates
	Instance        string        // this replica's name in the lease and in logs
	Logger          *slog.Logger
	// HasTokens reports whether a token was ever stored: if not, this is
	// a fresh deployment, and no leader can be alive.
	HasTokens func() bool
}

// Lease is this replica's side of the election.
type Lease struct {
	nc          *nats.Conn
	js          jetstream.JetStream
	tokenBucket string
	name        string // of the bucket
	replicas    int    // of the bucket, if it must be created again
	bucket      jetstream.KeyValue
	ttl         time.Duration
	margin      time.Duration
	instance    string
	log         *slog.Logger
	hasTokens   func() bool // Config.HasTokens
	// lastTerm is the term of this replica's last acquisition, which the
	// key may still hold after that lease ended (see take). Only acquire
	// uses it.
	lastTerm string
}

// Open binds the lease bucket, or creates it with cfg.TTL. An existing
// bucket is never changed: its MaxAge is the lease TTL every replica must
// share, and shortening it under a running leader would expire that
// leader's lease at once while it still believes it leads. A replica
// configured with another TTL uses the bucket's and says so. A bucket no
// lease can be held in is a *MisconfiguredError.
func Open(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) (*Lease, error) {
	name := kv.LeaseBucket(cfg.TokenBucket)
	b, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		b, err = createTTLBucket(ctx, js, name, leaseDescription, cfg.TTL, cfg.Replicas)
	}
	if err != nil {
		return nil, fmt.Errorf("publisher: open lease bucket: %w", err)
	}
	st, err := b.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("publisher: lease bucket: %w", err)
	}
	ttl := st.TTL()
	switch {
	case ttl <= 0:
		return nil, &MisconfiguredError{fmt.Sprintf("publisher: lease bucket %s has no TTL, so a lease would never lapse; delete it and restart", name)}
	case cfg.UpstreamTimeout > ttl/2:
		return nil, &MisconfiguredError{fmt.Sprintf("publisher: the lease bucket's TTL %s is shorter than twice the upstream timeout %s: "+
			"lower --upstream-timeout, or stop every replica and delete the bucket %s", ttl, cfg.UpstreamTimeout, name)}
	case ttl != cfg.TTL:
		cfg.Logger.Warn("using the lease bucket's TTL, not --lease-ttl: replicas must share one; to change it, stop every replica and delete the bucket",
			"bucket", name, "ttl", ttl, "lease_ttl", cfg.TTL)
	}
	return &Lease{
		nc:          nc,
		js:          js,
		tokenBucket: cfg.TokenBucket,
		name:        name,
		replicas:    cfg.Replicas,
		bucket:      b,
		ttl:         ttl,
		margin:      min(time.Second, ttl/10),
		instance:    cfg.Instance,
		log:         cfg.Logger,
		hasTokens:   cfg.HasTokens,
	}, nil
}

// MisconfiguredError is a lease bucket that retrying cannot fix; it says
// what to do.
type MisconfiguredError struct{ msg string }

func (e *MisconfiguredError) Error() string { return e.msg }

// Descriptions of the lease package's buckets.
const (
	leaseDescription = "wxtoken: leader lease of the refresher replicas"
	peersDescription = "wxtoken: what each refresher replica could lead, a key per replica"
)

// createTTLBucket creates one of the lease package's buckets, whose keys
// lapse after ttl, or binds it when another replica was quicker.
func createTTLBucket(ctx context.Context, js jetstream.JetStream, name, description string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: description,
		History:     1,
		TTL:         ttl,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		b, err = js.KeyValue(ctx, name)
	}
	return b, err
}

// The lease bucket can be deleted too. Anyone may create it again; what is
// guarded is taking the lease in a bucket never written to. Such a bucket
// is new: created again after a deletion (by the leader at its next
// renewal, or by a replica that started meanwhile) or by a fresh
// deployment. The leader that finds its lease gone with the bucket takes
// it again in the new one at once. Anyone else leaves a new bucket alone
// for a whole TTL from when it first saw it so, unless no token was ever
// stored (a fresh deployment, where no leader can be alive): by then a
// live leader has written its lease in it, and a dead one's last renewal
// has lapsed.

// ensureBucket creates the lease bucket again, with the TTL in use, if it
// is gone, and reports whether it has never been written to, and when it
// was created. The handle l.bucket keeps working on a new bucket.
func (l *Lease) ensureBucket(ctx context.Context) (fresh bool, created time.Time, err error) {
	stream, err := l.js.Stream(ctx, bucket.StreamName(l.name))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		l.log.Error("the lease bucket is gone (deleted?): creating it again", "bucket", l.name, "ttl", l.ttl)
		if _, err := createTTLBucket(ctx, l.js, l.name, leaseDescription, l.ttl, l.replicas); err != nil {
			l.log.Error("the lease bucket could not be created again; retrying", "bucket", l.name, "error", err)
			return false, time.Time{}, err
		}
		stream, err = l.js.Stream(ctx, bucket.StreamName(l.name))
	}
	if err != nil {
		return false, time.Time{}, err
	}
	info := stream.CachedInfo()
	return info.State.LastSeq == 0, info.Created, nil
}

// freshBucket is when this replica first saw a lease bucket new.
type freshBucket struct {
	created time.Time // the bucket's
	since   time.Time
}

// mayTake reports whether this replica may try to take the lease now, and
// if not, how long to wait. seen is what it saw before, kept across calls.
func (l *Lease) mayTake(ctx context.Context, seen *freshBucket) (time.Duration, bool) {
	fresh, created, err := l.ensureBucket(ctx)
	if err != nil || !fresh {
		*seen = freshBucket{}
		return 0, true // an error: the attempt reports it
	}
	// A fresh deployment: no token was ever stored, and no leader answers.
	if !l.hasTokens() && !l.leaderAnswers(ctx) {
		return 0, true
	}
	if !seen.created.Equal(created) { // deleted and created again meanwhile: from the start
		*seen = freshBucket{created: created, since: time.Now()}
		l.log.Warn("the lease bucket is new: leaving it for one lease TTL to a leader that may be alive", "bucket", l.name, "ttl", l.ttl)
	}
	if left := l.ttl - time.Since(seen.since); left > 0 {
		return min(left, l.ttl/4), false // and look again meanwhile
	}
	return 0, true
}

// leaderAnswers reports whether a leader of this deployment answers micro
// discovery: a leader serves its refresh endpoint for its whole term.
func (l *Lease) leaderAnswers(ctx context.Context) bool {
	subject, err := micro.ControlSubject(micro.PingVerb, kv.ServiceName, "")
	if err != nil {
		return false
	}
	inbox := l.nc.NewInbox()
	sub, err := l.nc.SubscribeSync(inbox)
	if err != nil {
		return false
	}
	defer sub.Unsubscribe()
	if err := l.nc.PublishRequest(subject, inbox, nil); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, leaderPingWait)
	defer cancel()
	since := l.nc.LastError()
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil || msg.Header.Get("Status") == "503" { // no responders: nobody serves
			if last := l.nc.LastError(); !errors.Is(last, since) && errors.Is(last, nats.ErrPermissionViolation) {
				l.log.Warn("may not ask whether a leader is alive; taking the lease as in a fresh deployment: "+
					"give the refresher publish on "+subject+" (see nats.conf)", "error", last)
			}
			return false
		}
		var ping micro.Ping
		if json.Unmarshal(msg.Data, &ping) == nil && ping.Metadata["bucket"] == l.tokenBucket {
			return true
		}
	}
}

// logStandingBy says who holds the lease this replica stands by behind.
// A holder of this replica's own name is another process: this one's run
// before a crash or a kill -9 (its lease lapses within a TTL; a restart
// fetches nothing meanwhile), or a second replica given the same
// --instance, which must not be.
func (l *Lease) logStandingBy(other jetstream.KeyValueEntry) {
	leader, _ := kv.DecodeLeaseHolder(other.Value())
	if leader.Instance == l.instance {
		l.log.Info("standing by: the lease is held under this replica's own name by another process: "+
			"its run before a crash or kill -9, whose lease lapses within the lease TTL, or another replica "+
			"given the same --instance, which must not be (give each replica its own)", "leader", leader.Instance, "ttl", l.ttl)
		return
	}
	l.log.Info("standing by: another replica leads", "leader", leader.Instance)
}

// leaderPingWait bounds the wait for a leader's answer to discovery.
const leaderPingWait = 250 * time.Millisecond

// Held is a lease this replica holds until Lost closes or Release.
type Held struct {
	l      *Lease
	holder kv.LeaseHolder
	value  []byte

	lostCh     chan struct{} // closed when the lease is, or may be, gone
	stop       chan struct{}
	done       chan struct{}
	rev        uint64 // of the lease's last write; renew's own until done closes
	lostOnce   sync.Once
	validUntil atomic.Int64 // Unix nanoseconds until which the lease surely holds

	// What renew knows of the renewals, for confirmed.
	mu        sync.Mutex
	renewedAt time.Time     // when the last successful renewal (or the take) was sent
	failing   bool          // the last renewal attempt failed
	renewed   chan struct{} // closed, and replaced, at each successful renewal
}

// Lost is closed when the lease is, or may be, gone: from then on this
// replica may not call WeChat.
func (h *Held) Lost() <-chan struct{} { return h.lostCh }

// remaining is how long the lease surely still holds.
func (h *Held) remaining() time.Duration {
	return time.Until(time.Unix(0, h.validUntil.Load()))
}

// renewalGrace is how late a renewal may succeed, after a third of the TTL
// since the last, before the lease is in doubt: a renewal takes
// milliseconds, and a call to WeChat that finds the lease in doubt only
// waits for the next one.
func (l *Lease) renewalGrace() time.Duration { return l.ttl / 12 }

// confirmed reports whether the lease is known to be held now: NATS is
// connected, the last renewal succeeded, and the next is not overdue. A
// leader cut off from NATS keeps its lease until it might lapse, but
// could not store what it fetched, and a standby takes over soon after:
// no call to WeChat starts while the lease is in doubt. next is closed at
// the next successful renewal.
func (h *Held) confirmed() (held bool, next <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.renewed == nil { // before renew's first word
		h.renewed = make(chan struct{})
	}
	overdue := time.Since(h.renewedAt) > h.l.ttl/3+h.l.renewalGrace()
	held = !h.failing && !overdue && h.remaining() > 0 && h.l.nc.Status() == nats.CONNECTED
	return held, h.renewed
}

// Covers waits until the lease is known to be held, and reports whether
// it surely covers a call that may take d; false if ctx ends first. A call
// to WeChat cannot be taken back once sent, and a token that a leader cut
// off from NATS fetched is one it cannot store, while the leader after it
// fetches another.
func (h *Held) Covers(ctx context.Context, d time.Duration) bool {
	for {
		held, next := h.confirmed()
		if held {
			return h.remaining() >= d
		}
		select {
		case <-next:
		case <-ctx.Done():
			return false
		}
	}
}

// confirm records a successful renewal sent at sent.
func (h *Held) confirm(sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.renewedAt, h.failing = sent, false
	if h.renewed != nil {
		close(h.renewed)
	}
	h.renewed = make(chan struct{})
}

// doubt records a failed renewal.
func (h *Held) doubt() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing = true
}

// Acquire waits until this replica holds the lease or ctx ends.
func (l *Lease) Acquire(ctx context.Context) (*Held, error) {
	holder := kv.LeaseHolder{Instance: l.instance, Term: newTerm()}
	ours := func(term string) bool { return term != "" && (term == holder.Term || term == l.lastTerm) }
	defer func() { l.lastTerm = holder.Term }()

	// Wake at once when the leader releases the lease (a delete marker).
	wake := make(chan struct{}, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	defer func() {
		stopWatch()
		<-watched
	}()
	go func() {
		defer close(watched)
		(&kvwatch.Follower{Bucket: l.bucket, Key: kv.LeaseKey, Conn: l.nc, OnEntry: func(e jetstream.KeyValueEntry) {
			if e.Operation() != jetstream.KeyValuePut {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}}).Run(watchCtx)
	}()
	// And when the connection comes back: the server may have restarted,
	// and the lease be free, or this replica's.
	reconnected := l.nc.StatusChanged(nats.CONNECTED)
	defer l.nc.RemoveStatusListener(reconnected)

	logged := false
	var seen freshBucket
	for {
		// A lease write sent while NATS is away waits in nats.go's buffer
		// and goes out when the connection is back, after this attempt
		// gave up on it: try only on a live connection.
		bucket.AwaitConnection(ctx, l.nc)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if wait, ok := l.mayTake(ctx, &seen); !ok {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			continue
		}
		h, other, err := l.take(ctx, holder, ours)
		if err == nil {
			return h, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		wait := l.ttl / 2
		switch {
		case other != nil:
			// Someone holds it: sleep until it would lapse unless renewed.
			if !logged {
				l.logStandingBy(other)
				logged = true
			}
			// The server checks ages at least every 250ms.
			wait = min(max(time.Until(other.Created().Add(l.ttl+250*time.Millisecond)), 50*time.Millisecond), l.ttl/2)
		case errors.Is(err, jetstream.ErrKeyNotFound):
			wait = 0 // lapsed or released between the two calls
		case !bucket.IsConflict(err):
			l.log.Warn("cannot reach the lease bucket; retrying", "error", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-wake:
			t.Stop()
		case <-reconnected:
			t.Stop()
		case <-t.C:
		}
	}
}

// take makes one attempt at the lease for holder: it creates the key, or
// takes over a key that holds a term of this replica's (ours). When another
// replica holds the key, it returns that replica's entry with the conflict.
//
// The key can hold this replica's term although it does not lead: a Create
// whose answer was lost, or the lease of its last term, which it gave up
// when it could not renew in time. A renewal given up during a NATS outage
// is even written after it: nats.go sends what it buffered while
// disconnected when it reconnects. Nobody else wrote the key since, so
// nobody else leads, and the replica takes the key over with
// compare-and-swap on that write, at once, instead of standing by behind
// itself until the lease lapses.
func (l *Lease) take(ctx context.Context, holder kv.LeaseHolder, ours func(term string) bool) (*Held, jetstream.KeyValueEntry, error) {
	holder.Since = time.Now().UTC()
	value := kv.EncodeLeaseHolder(holder)
	sent := time.Now()
	rev, err := l.bucket.Create(ctx, kv.LeaseKey, value)
	if bucket.IsConflict(err) {
		e, gerr := l.bucket.Get(ctx, kv.LeaseKey)
		if errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return nil, nil, gerr
		}
		if gerr != nil {
			return nil, nil, err
		}
		if cur, derr := kv.DecodeLeaseHolder(e.Value()); derr != nil || !ours(cur.Term) {
			return nil, e, err
		}
		sent = time.Now()
		rev, err = l.bucket.Update(ctx, kv.LeaseKey, value, e.Revision())
	}
	if err != nil {
		return nil, nil, err
	}
	h := &Held{l: l, holder: holder, value: value, rev: rev,
		lostCh: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	h.validUntil.Store(sent.Add(l.ttl - l.margin).UnixNano())
	go h.renew(sent)
	return h, nil, nil
}

// newTerm returns a random term: it tells one acquisition from another,
// and this replica from a restarted namesake.
func newTerm() string {
	var term [8]byte
	rand.Read(term[:])
	return hex.EncodeToString(term[:])
}

// renew keeps the lease until release, or closes lost when it cannot: the
// lease was taken (compare-and-swap failed) or could not be renewed before
// it might lapse. No renewal attempt outlasts the lease: an attempt that
// hangs on an unreachable server would otherwise hold the leader past the
// moment it must stop.
func (h *Held) renew(sent time.Time) {
	defer close(h.done)
	h.confirm(sent) // the take
	l := h.l
	validUntil := sent.Add(l.ttl - l.margin)
	every := l.ttl / 3
	next := time.NewTimer(every)
	defer next.Stop()
	expired := time.NewTimer(time.Until(validUntil))
	defer expired.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-expired.C:
			h.lose("the lease could not be renewed before it might lapse")
			return
		case <-next.C:
		}
		sent := time.Now()
		attemptEnd := sent.Add(every)
		if validUntil.Before(attemptEnd) {
			attemptEnd = validUntil
		}
		ctx, cancel := context.WithDeadline(context.Background(), attemptEnd)
		err := h.update(ctx)
		cancel()
		if err != nil {
			h.doubt()
		}
		switch {
		case err == nil:
			validUntil = sent.Add(l.ttl - l.margin)
			h.validUntil.Store(validUntil.UnixNano())
			h.confirm(sent)
			expired.Reset(time.Until(validUntil))
			next.Reset(every)
		case bucket.IsConflict(err):
			h.lose("another replica took the lease")
			return
		case !time.Now().Before(validUntil):
			h.lose("the lease could not be renewed before it might lapse")
			return
		default:
			l.log.Warn("lease renewal failed; retrying", "error", err)
			next.Reset(every / 4)
		}
	}
}

// update renews with compare-and-swap.
func (h *Held) update(ctx context.Context) error {
	newRev, err := h.l.bucket.Update(ctx, kv.LeaseKey, h.value, h.rev)
	if bucket.IsConflict(err) || bucket.MayBeGone(err) {
		newRev, err = h.retake(ctx, err)
	}
	if err == nil {
		h.rev = newRev
	}
	return err
}

// retake answers a renewal that failed with err because the key moved or
// the bucket is gone. If the key still holds this term (an earlier renewal
// succeeded but its answer was lost), it renews over it. If the lease went
// with its bucket, it takes the lease again in the new one (which nobody
// else takes for a TTL). Otherwise err stands.
func (h *Held) retake(ctx context.Context, err error) (uint64, error) {
	if !bucket.IsConflict(err) {
		if fresh, _, berr := h.l.ensureBucket(ctx); berr == nil && fresh {
			return h.l.bucket.Create(ctx, kv.LeaseKey, h.value)
		}
		return 0, err
	}
	e, gerr := h.l.bucket.Get(ctx, kv.LeaseKey)
	switch {
	case gerr == nil:
		if cur, derr := kv.DecodeLeaseHolder(e.Value()); derr == nil && cur.Term == h.holder.Term {
			return h.l.bucket.Update(ctx, kv.LeaseKey, h.value, e.Revision())
		}
	case errors.Is(gerr, jetstream.ErrKeyNotFound):
		// Created again by another replica before this one renewed.
		if fresh, _, berr := h.l.ensureBucket(ctx); berr == nil && fresh {
			return h.l.bucket.Create(ctx, kv.LeaseKey, h.value)
		}
	}
	return 0, err
}

func (h *Held) lose(why string) {
	if h.end() {
		h.l.log.Warn("leadership lost: "+why, "instance", h.l.instance)
	}
}

// end closes lost, once, and reports whether this call did.
func (h *Held) end() (ended bool) {
	h.lostOnce.Do(func() {
		h.validUntil.Store(0)
		close(h.lostCh)
		ended = true
	})
	return ended
}

// Release stops renewing and, unless the lease was lost, deletes it so
// that a standby takes over at once instead of after the TTL.
func (h *Held) Release() {
	close(h.stop)
	<-h.done
	if !h.end() {
		return // lost already: the key is not ours to delete
	}
	ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
	defer cancel()
	if err := h.l.bucket.Delete(ctx, kv.LeaseKey, jetstream.LastRevision(h.rev)); err != nil {
		h.l.log.Warn("lease not released; a standby takes over when it lapses", "error", err)
		return
	}
	h.l.log.Info("leadership released")
}
