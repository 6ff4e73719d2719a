package subscriber

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// Set follows many keys of the token bucket in one process: every key the
// bucket has and each new one the refresher stores, or only the keys given
// with WithKeys. A third-party platform's backend serving its
// authorizers, a WeCom SaaS serving its corps, or an agent on a busy host
// uses one Set where it would use a Subscriber per key: the Set takes
// every value on one subscription to the Value subjects and reads the
// bucket once at start, so that a key costs its value and a few hundred
// bytes, not a goroutine and a subscription of its own.
//
// Per key, a Set keeps the promises of a Subscriber: Token reads with no
// I/O and no lock; Current says when a value is expired, removed for good
// or the Set closed; a value that does not decode leaves the last good one;
// what was stored while the connection was down is read after the
// reconnect; a value about to expire with nothing newer in sight is looked
// for in the bucket; Refresh and Transport react to WeChat rejecting a
// token. Updated, Done and the OnSetRotate and OnSetError callbacks tell of
// changes, and Close ends it all, with the lifecycle of a Subscriber.
type Set struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	opts     options
	subjects kv.Subjects
	values   string          // the Value subjects' prefix: "wechat.token.value."
	named    map[string]bool // WithKeys; nil: every key

	keys     index
	bucket   atomic.Pointer[jetstream.KeyValue] // once bound
	lastErr  atomic.Pointer[keyError]
	ready    chan struct{} // closed once the bucket was read the first time
	readOnce sync.Once

	// applying serialises what changes the entries (values, removals,
	// the index's additions, the stale sweep), and guards updated against
	// a send after it is closed; readers never take it.
	applying  sync.Mutex
	updated   chan struct{}
	stopped   bool          // updated is closed
	synced    uint64        // the revision the last complete read of the bucket reached
	nextSweep int64         // Unix nanoseconds: when the stale sweep runs next
	sooner    chan struct{} // a value needs looking after before nextSweep

	waiting waiters

	ctx     context.Context // ends with Close
	cancel  context.CancelFunc
	workers sync.WaitGroup // the goroutines following the keys
	cb      setCallbacks
	closing sync.Once
	halted  chan struct{} // closed when the followers have ended and updated is closed
	done    chan struct{} // closed when halted and the callbacks have ended
}

// entry is what a Set holds of one key.
type entry struct {
	key     string
	current atomic.Pointer[Token]
	before  atomic.Pointer[Token] // the one current held before, for Refresh
	removal atomic.Pointer[removal]

	checkAt  int64       // Unix nanoseconds: when the value is read from the bucket if nothing newer came; under applying
	queued   atomic.Bool // waiting for the callback goroutine
	notified uint64      // the last revision passed to OnSetRotate; the callback goroutine's
}

// keyError is a problem with a key, or with the Set itself (key "").
type keyError struct {
	key string
	err error
}

// NewSet follows the keys of the token bucket (every key, or those of
// WithKeys) and returns once it has read the bucket: it then holds every
// key the bucket has. A key the bucket does not have yet is held the moment
// the refresher stores it. ctx bounds only that wait: the Set runs until
// Close. If the bucket does not exist yet (no refresher has run), NewSet
// waits for it too. An option NewSet cannot use is refused at once with an
// error that wraps ErrInvalidOption, and so is a closed connection.
//
// The read, at start and after a reconnect, is one JetStream consumer that
// lives until it has delivered what the Set needs; the NATS user needs the
// permissions of nats.conf's service user.
func NewSet(ctx context.Context, nc *nats.Conn, opts ...Option) (*Set, error) {
	o, js, err := setUp(nc, opts, (*options).forSet)
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	subjects := kv.Subjects{Prefix: o.subjectPrefix}
	s := &Set{
		nc:        nc,
		js:        js,
		opts:      o,
		subjects:  subjects,
		values:    subjects.Value(""),
		ready:     make(chan struct{}),
		updated:   make(chan struct{}, 1),
		nextSweep: time.Now().Add(staleRecheck).UnixNano(),
		sooner:    make(chan struct{}, 1),
		ctx:       bg,
		cancel:    cancel,
		halted:    make(chan struct{}),
		done:      make(chan struct{}),
	}
	if o.keys != nil {
		s.named = map[string]bool{}
		for _, key := range o.keys {
			s.named[key] = true
		}
	}
	s.cb.init(s)
	s.workers.Go(func() { s.run(bg, js) })
	select {
	case <-s.ready:
	case <-ctx.Done():
		select {
		case <-s.ready: // both at once: the read is what counts
		default:
			s.Close()
			err := fmt.Errorf("subscriber: the token bucket was not read yet: %w", ctx.Err())
			if last := s.Err(); last != nil {
				err = fmt.Errorf("%w (last problem: %w)", err, last)
			}
			return nil, err
		}
	}
	s.cb.start() // callbacks come after NewSet has returned
	return s, nil
}

// Token returns the current value of key: an access_token, or a ticket. It
// does no I/O and takes no lock, and after Close it still returns the last
// value. For a key the Set holds nothing of it returns the zero Token;
// Current says whether a value can be used.
func (s *Set) Token(key string) Token {
	// Small enough to be inlined: the 48 bytes are then copied straight
	// from the value held to the caller's variable.
	if t := s.keys.current(key); t != nil {
		return *t
	}
	return Token{}
}

// Current returns key's current value, and an error if it cannot be used:
// ErrClosed after Close, one wrapping ErrUnknownKey for a key the Set
// holds nothing of, one wrapping ErrRemoved when the refresher removed the
// key for good (an authorizer that withdrew its authorization from the
// platform), or one wrapping ErrExpired when it has expired (the refresher
// did not replace it in time). The last value is returned in every case.
func (s *Set) Current(key string) (Token, error) {
	e := s.keys.get(key)
	var t Token
	if e != nil {
		t = e.token()
	}
	switch {
	case s.isClosed():
		return t, ErrClosed
	case e == nil:
		return t, s.unknownKey(key)
	}
	if err := e.removal.Load().error(key); err != nil {
		return t, err
	}
	if t.Expired(time.Now()) {
		return t, fmt.Errorf("%w: %s's token at revision %d expired at %s", ErrExpired, key, t.Revision,
			t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// unknownKey wraps ErrUnknownKey, saying why the Set holds nothing of key.
func (s *Set) unknownKey(key string) error {
	if s.named != nil && !s.named[key] {
		return fmt.Errorf("%w: %.80q is not among the keys of this set (WithKeys)", ErrUnknownKey, key)
	}
	return fmt.Errorf("%w: the bucket has no value of %.80q (yet)", ErrUnknownKey, key)
}

// Keys returns the keys the Set holds, sorted: each with a value, or said
// removed (Current tells which).
func (s *Set) Keys() []string {
	var keys []string
	for e := range s.keys.all() {
		keys = append(keys, e.key)
	}
	slices.Sort(keys)
	return keys
}

// Refresh asks the refresher to replace key's value at revision stale,
// which the caller saw WeChat reject, and returns once the Set holds a
// newer one (or, if WeChat says the token still works, the current one),
// as Subscriber.Refresh does. A key the Set holds nothing of gets an error
// wrapping ErrUnknownKey.
func (s *Set) Refresh(ctx context.Context, key string, stale uint64) (Token, error) {
	if s.isClosed() {
		return Token{}, ErrClosed
	}
	if s.keys.get(key) == nil {
		return Token{}, s.unknownKey(key)
	}
	return refresh(ctx, s.Member(key), stale, "")
}

// Updated returns a channel that receives a value after a key's value
// changed, a key was added, or one was removed for good. It holds at most
// one pending notification, and is closed by Close. OnSetRotate says which
// key changed.
func (s *Set) Updated() <-chan struct{} { return s.updated }

// Done returns a channel that is closed once the Set has stopped: after
// Close, when its goroutines have ended, a callback under way at Close
// included.
func (s *Set) Done() <-chan struct{} { return s.done }

// Err returns the last problem the Set met that no good value has
// overcome since: a key's value that did not decode (until a good value of
// the key comes), or a read of the bucket that failed (until one succeeds).
// The values in memory are still the last good ones.
func (s *Set) Err() error {
	if p := s.lastErr.Load(); p != nil {
		return p.err
	}
	return nil
}

// Close stops following the keys, and returns once everything the Set
// started has ended, except a callback under way: it may be the very
// caller, so Close does not wait for it, and Done is closed when it
// returns. No callback starts after Close. Close may be called from any
// goroutine, callbacks included; it is idempotent and returns nil. Token
// keeps returning the last values after it; Current, Refresh and requests
// through Transport return ErrClosed.
func (s *Set) Close() error {
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

func (s *Set) isClosed() bool { return s.ctx.Err() != nil }

// token returns the value held, or the zero Token.
func (e *entry) token() Token {
	if t := e.current.Load(); t != nil {
		return *t
	}
	return Token{}
}

// holdsNewer reports whether e holds revision already, or a newer one: a
// value, or the key's removal.
func (e *entry) holdsNewer(revision uint64) bool {
	if cur := e.current.Load(); cur != nil && cur.Revision >= revision {
		return true
	}
	r := e.removal.Load()
	return r != nil && r.revision >= revision
}

// waitNewer waits until the Set holds a value of key newer than revision,
// or the key is removed.
func (s *Set) waitNewer(ctx context.Context, key string, revision uint64) (Token, error) {
	w := s.waiting.join(key)
	defer s.waiting.leave(key, w)
	for {
		changed := s.waiting.next(w)
		if e := s.keys.get(key); e != nil {
			if t := e.current.Load(); t != nil && t.Revision > revision {
				return *t, nil
			}
			if err := e.removal.Load().error(key); err != nil {
				return e.token(), err
			}
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

// waiters wakes what waits for a key's next value (Refresh, Transport):
// only keys someone waits on cost anything.
type waiters struct {
	mu sync.Mutex
	by map[string]*waiter
}

type waiter struct {
	changed chan struct{} // closed and replaced when the key changes
	n       int           // goroutines waiting
}

// join registers a wait on key; leave ends it.
func (w *waiters) join(key string) *waiter {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.by == nil {
		w.by = map[string]*waiter{}
	}
	wt := w.by[key]
	if wt == nil {
		wt = &waiter{changed: make(chan struct{})}
		w.by[key] = wt
	}
	wt.n++
	return wt
}

func (w *waiters) leave(key string, wt *waiter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wt.n--; wt.n == 0 {
		delete(w.by, key)
	}
}

// next returns the channel closed at wt's key's next change.
func (w *waiters) next(wt *waiter) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return wt.changed
}

// wake tells those waiting on key that it changed.
func (w *waiters) wake(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wt := w.by[key]; wt != nil {
		close(wt.changed)
		wt.changed = make(chan struct{})
	}
}
