// Package subscriber gives a Go service the current WeChat access_token of
// an app, or a JS-SDK ticket fetched with it, kept in memory and swapped the
// moment the central refresher rotates it. It follows one key: an appid for
// the token, "<appid>.jsapi_ticket" or "<appid>.wx_card_ticket" for a
// ticket (package jssdk signs pages with one). A service never fetches a token from WeChat itself: when WeChat
// rejects one, it asks the refresher for a new one with Refresh, or lets
// Transport do it.
//
// The lifecycle: New waits for the first token; Token reads it, with no
// I/O and no lock, for every WeChat call; Current says when the token in
// memory is expired, removed for good (an authorizer that withdrew) or the
// subscriber closed; Refresh, or Transport, reacts
// to WeChat rejecting it; Updated, Done and the OnRotate and OnError
// callbacks tell of changes; Close ends it all.
//
// A process that serves many keys (a third-party platform's backend, its
// authorizers) follows them with one Set instead: one subscription and one
// read of the bucket for them all, and per key the promises of a
// Subscriber.
//
// A service's own tests get a refresher, a NATS server and a fake WeChat
// in one call from package wxtokentest.
package subscriber

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/internal/swapprobe"
	"github.com/wxtoken/wxtoken/kv"
)

// Token is the value under the followed key (an app's access_token, or a
// ticket) with the bucket revision it was stored at.
// It is small on purpose: Token() copies it for every WeChat call, and at
// 48 bytes the copy is a few aligned moves (the record's fetched_at is
// left out for that; read the bucket if you need it).
type Token struct {
	Value     string
	Revision  uint64
	ExpiresAt time.Time
}

// Expired reports whether the token has expired at now.
func (t Token) Expired(now time.Time) bool { return !now.Before(t.ExpiresAt) }

// Subscriber follows one app's token in the token bucket.
type Subscriber struct {
	key      string // an appid, or "<appid>.<kind>"
	nc       *nats.Conn
	opts     options
	subjects kv.Subjects

	js      jetstream.JetStream
	bucket  atomic.Pointer[jetstream.KeyValue] // once bound
	current atomic.Pointer[Token]
	removal atomic.Pointer[removal] // the key's removal, until a newer value
	before  atomic.Pointer[Token]   // the one current held before, for Refresh
	lastErr atomic.Pointer[error]
	staleAt atomic.Int64 // Unix nanoseconds: when the held token needs looking after

	// applying serialises apply, and guards updated against a send after
	// it is closed; readers never take it.
	applying sync.Mutex
	updated  chan struct{}
	stopped  bool // updated is closed; under applying

	mu      sync.Mutex
	changed chan struct{} // closed at the next change of current; nil until someone waits for one

	ctx     context.Context // ends with Close
	cancel  context.CancelFunc
	workers sync.WaitGroup // the goroutine following the token
	cb      callbacks
	closing sync.Once
	halted  chan struct{} // closed when the follower has ended and updated is closed
	done    chan struct{} // closed when halted and the callbacks have ended
}

// New follows the key's value and returns once the first one is in memory.
// The key is an appid, for its access_token, or "<appid>.<kind>" for what
// hangs off it, such as "wx1234567890abcdef.jsapi_ticket".
// ctx bounds only that wait: the subscriber runs until Close. If the bucket
// does not exist yet (no refresher has run), New waits for it too. An
// option New cannot use is refused at once with an error that wraps
// ErrInvalidOption, and so are an appid that cannot be one and a closed
// connection.
func New(ctx context.Context, nc *nats.Conn, key string, opts ...Option) (*Subscriber, error) {
	if err := kv.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("subscriber: %w", err)
	}
	o, js, err := setUp(nc, opts, (*options).forSubscriber)
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	s := &Subscriber{
		key:      key,
		nc:       nc,
		js:       js,
		opts:     o,
		subjects: kv.Subjects{Prefix: o.subjectPrefix},
		updated:  make(chan struct{}, 1),
		ctx:      bg,
		cancel:   cancel,
		halted:   make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.cb.init(s)
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		s.run(bg, js)
	}()
	if _, err := s.waitNewer(ctx, 0); err != nil {
		s.Close()
		if errors.Is(err, ErrRemoved) {
			return nil, err
		}
		if last := s.Err(); last != nil {
			err = fmt.Errorf("%w (last problem: %w)", err, last)
		}
		return nil, fmt.Errorf("subscriber: no value for %s yet: %w", key, err)
	}
	s.cb.start() // callbacks come after New has returned
	return s, nil
}

// run binds the bucket, retrying until it exists, then follows the key.
func (s *Subscriber) run(ctx context.Context, js jetstream.JetStream) {
	bucket, published, ok := bind(ctx, js, s.opts.bucket, s.subjects, s.report)
	if !ok {
		return
	}
	s.bucket.Store(&bucket)
	if published && s.followValues(ctx, bucket) {
		return
	}
	// The refresher does not announce values (older, or a server without
	// bucket metadata), or this user may not subscribe to them: watch.
	s.opts.logger.Info("following the token with a KV watch", "appid", s.key)
	f := &kvwatch.Follower{
		Bucket: bucket,
		Key:    s.key,
		Conn:   s.nc,
		OnEntry: func(e jetstream.KeyValueEntry) {
			if e.Operation() != jetstream.KeyValuePut {
				s.lookForRemoval(ctx, bucket) // or someone's delete, which the refresher writes over
			}
			s.apply(e.Revision(), e.Operation(), e.Value())
		},
		OnError: func(err error) {
			s.opts.logger.Warn("token watch interrupted, resuming", "appid", s.key, "error", err)
		},
	}
	f.Run(ctx)
}

// bind binds the bucket, retrying until it exists or ctx ends (ok is then
// false), and reports whether its refresher publishes the values it stores.
// Each failure is reported.
func bind(ctx context.Context, js jetstream.JetStream, name string, subjects kv.Subjects, report func(error)) (bucket jetstream.KeyValue, published, ok bool) {
	delay := 50 * time.Millisecond
	for {
		b, err := kv.Bind(ctx, js, name)
		if err == nil {
			published, err = kv.PublishesValues(ctx, b, subjects)
		}
		if err == nil {
			return b, published, true
		}
		report(err)
		select {
		case <-ctx.Done():
			return nil, false, false
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// followValues follows the key with no JetStream consumer: a core
// subscription to the subject the refresher publishes each stored value on,
// and a direct get of the key at start and after every reconnect, for what
// was published while the connection was down. (Refresh also gets the key
// if a revision it was told of does not arrive.) It returns false at once
// if the server refuses the subscription.
func (s *Subscriber) followValues(ctx context.Context, bucket jetstream.KeyValue) bool {
	subject := s.subjects.Value(s.key)
	// A channel subscription: nats.go's reader hands each value straight
	// to this goroutine, which swaps it in; from the socket to Token()
	// that is one hand-off, as few as a callback subscription has.
	values := make(chan *nats.Msg, 64)
	var sub *nats.Subscription
	for {
		var err error
		if sub, err = s.nc.ChanSubscribe(subject, values); err == nil {
			// A refused subscription is reported apart, before the answer
			// to a flush.
			fctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
			err = s.nc.FlushWithContext(fctx)
			cancel()
		}
		if err == nil {
			break
		}
		if sub != nil {
			sub.Unsubscribe()
		}
		if ctx.Err() != nil {
			return true
		}
		s.report(err)
		select {
		case <-ctx.Done():
			return true
		case <-time.After(time.Second):
		}
	}
	if err := s.nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
		sub.Unsubscribe()
		s.opts.logger.Warn("may not subscribe to the published token: grant subscribe on it (see nats.conf)",
			"appid", s.key, "subject", subject)
		return false
	}
	defer sub.Unsubscribe()
	reconnected := s.nc.StatusChanged(nats.CONNECTED)
	defer s.nc.RemoveStatusListener(reconnected)

	// The subscription goes out before the get on the same connection, so
	// the server has it before it answers: no value falls between the two.
	s.get(ctx, bucket)
	// Last line of defence: a token about to expire with nothing newer in
	// sight means an announcement was missed, or the refresher is down.
	// Read the key then, and every staleRecheck while it stays so. The
	// timer pokes a channel of its own: a select on a timer's channel
	// takes the timer out of the runtime's heap and puts it back each
	// time this goroutine parks and wakes, that is at every value.
	stale := make(chan struct{}, 1)
	staleTimer := time.AfterFunc(s.untilStale(), func() {
		select {
		case stale <- struct{}{}:
		default:
		}
	})
	defer staleTimer.Stop()
	for {
		select {
		case <-ctx.Done():
			return true
		case m := <-values:
			rev, record, err := kv.DecodeValueMsg(m)
			if err != nil {
				s.report(err)
				continue
			}
			if reason := kv.RemovalReason(m.Header); reason != "" {
				s.remove(rev, reason)
				continue
			}
			s.apply(rev, kv.ValueOperation(m.Header), record)
		case <-reconnected:
			s.get(ctx, bucket)
		case <-stale:
			if s.untilStale() <= 0 {
				s.get(ctx, bucket)
			}
			staleTimer.Reset(max(s.untilStale(), staleRecheck))
		}
	}
}

// staleRecheck is how often a token past its stale point is looked for.
const staleRecheck = 30 * time.Second

// untilStale is the time until the held token becomes stale: a quarter of
// its lifetime, at most a minute, before it expires.
func (s *Subscriber) untilStale() time.Duration {
	return time.Until(time.Unix(0, s.staleAt.Load()))
}

// get reads the key and applies it, retrying with backoff until it
// succeeds, finds no key, or ctx ends.
func (s *Subscriber) get(ctx context.Context, bucket jetstream.KeyValue) {
	delay := 50 * time.Millisecond
	for {
		gctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
		e, err := bucket.Get(gctx, s.key)
		cancel()
		switch {
		case err == nil:
			s.apply(e.Revision(), e.Operation(), e.Value())
			return
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Not written yet (it will be published), deleted by someone
			// (the refresher writes it again), or removed for good, which
			// its delete marker says.
			s.lookForRemoval(ctx, bucket)
			return
		case ctx.Err() != nil:
			return
		}
		s.report(fmt.Errorf("subscriber: reading %s: %w", s.key, err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// apply takes in a revision of the app's key. A value that does not decode
// is reported and otherwise ignored: the last good token stays.
func (s *Subscriber) apply(revision uint64, op jetstream.KeyValueOp, value []byte) {
	// Values arrive from the subscription and from gets after reconnects:
	// one at a time, or an older one could overwrite a newer.
	s.applying.Lock()
	defer s.applying.Unlock()
	if s.stopped || s.holdsNewer(revision) {
		return // already held, or older than what is held
	}
	if op != jetstream.KeyValuePut {
		s.opts.logger.Warn("token key was deleted; keeping the last token", "appid", s.key, "revision", revision)
		return
	}
	rec, err := kv.DecodeCredential(s.key, value)
	if err != nil {
		s.report(fmt.Errorf("subscriber: revision %d of %s: %w", revision, s.key, err))
		return
	}
	t := &Token{Value: rec.Value, Revision: revision, ExpiresAt: rec.ExpiresAt}
	s.before.Store(s.current.Load())
	s.current.Store(t)
	s.removal.Store(nil) // a value after a removal: the key is back
	swapprobe.Swapped(s.key, revision)
	s.staleAt.Store(rec.ExpiresAt.Add(-min(rec.Lifetime()/4, time.Minute)).UnixNano())
	s.lastErr.Store(nil)
	s.cb.overcome()
	s.changedLocked()
}

// holdsNewer reports whether the subscriber holds revision already, or a
// newer one: a token, or the key's removal. Callers hold s.applying.
func (s *Subscriber) holdsNewer(revision uint64) bool {
	if cur := s.current.Load(); cur != nil && cur.Revision >= revision {
		return true
	}
	r := s.removal.Load()
	return r != nil && r.revision >= revision
}

// changedLocked wakes what waits on a change, and Updated. Callers hold
// s.applying.
func (s *Subscriber) changedLocked() {
	s.mu.Lock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	s.mu.Unlock()
	select {
	case s.updated <- struct{}{}:
	default:
	}
}

// nextChange returns a channel closed at the next change of the token. It
// is made when someone asks for it: a change nobody waits for allocates
// nothing.
func (s *Subscriber) nextChange() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// report records a problem, logs it and hands it to OnError. It never
// blocks on the callback.
func (s *Subscriber) report(err error) {
	s.lastErr.Store(&err)
	s.opts.logger.Warn("token not usable", "appid", s.key, "error", err)
	s.cb.reportError(err)
}

// Token returns the current token. It does no I/O and takes no lock, and
// after Close it still returns the last token. Current says whether the
// token can still be used.
func (s *Subscriber) Token() Token {
	if t := s.current.Load(); t != nil {
		return *t
	}
	return Token{}
}

// Current returns the current token, and an error if it cannot be used:
// ErrClosed after Close, an error wrapping ErrRemoved when the refresher
// removed the key for good (an authorizer that withdrew its authorization
// from the platform), or one wrapping ErrExpired when it has expired (the
// refresher did not replace it in time). The last token is returned in
// every case.
func (s *Subscriber) Current() (Token, error) {
	t := s.Token()
	if s.isClosed() {
		return t, ErrClosed
	}
	if err := s.removedError(); err != nil {
		return t, err
	}
	switch {
	case t.Expired(time.Now()):
		return t, fmt.Errorf("%w: %s's token at revision %d expired at %s", ErrExpired, s.key, t.Revision,
			t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// Key is the key the subscriber follows.
func (s *Subscriber) Key() string { return s.key }

// AppID is the app whose token, or ticket, the subscriber follows.
func (s *Subscriber) AppID() string {
	appid, _ := kv.SplitKey(s.key)
	return appid
}

// Updated returns a channel that receives a value after the token changed,
// or the key was removed for good (Current says ErrRemoved). It holds at
// most one pending notification: read Token, or Current, after receiving.
// It is closed by Close, so `for range sub.Updated()` ends with the
// subscriber.
func (s *Subscriber) Updated() <-chan struct{} { return s.updated }

// Done returns a channel that is closed once the subscriber has stopped:
// after Close, when its goroutines have ended, a callback under way at
// Close included.
func (s *Subscriber) Done() <-chan struct{} { return s.done }

// Err returns the last problem seen since the last good token arrived: a
// value in the bucket that did not decode, say. The token in memory is
// still the last good one.
func (s *Subscriber) Err() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// waitNewer waits until the subscriber holds a token newer than revision.
func (s *Subscriber) waitNewer(ctx context.Context, revision uint64) (Token, error) {
	for {
		changed := s.nextChange()
		if t := s.current.Load(); t != nil && t.Revision > revision {
			return *t, nil
		}
		if err := s.removedError(); err != nil {
			return s.Token(), err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		case <-s.ctx.Done():
			return Token{}, ErrClosed
		}
	}
}

// Close stops following the token, and returns once everything the
// subscriber started has ended, except a callback under way: it may be
// the very caller, so Close does not wait for it, and Done is closed when
// it returns. No callback starts after Close. Close may be called from any
// goroutine, callbacks included; it is idempotent and returns nil. Token
// keeps returning the last token after it; Current, Refresh and requests
// through Transport return ErrClosed.
func (s *Subscriber) Close() error {
	s.closing.Do(func() {
		s.cancel()
		go func() {
			s.workers.Wait()
			s.applying.Lock()
			s.stopped = true
			close(s.updated)
			s.applying.Unlock()
			close(s.halted)
			<-s.cb.ended
			close(s.done)
		}()
	})
	<-s.halted
	if !s.cb.stop() {
		<-s.done
	}
	return nil
}

func (s *Subscriber) isClosed() bool { return s.ctx.Err() != nil }
