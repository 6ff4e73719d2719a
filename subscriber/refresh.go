package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// Refresh asks the refresher to replace the token at revision stale, which
// the caller saw WeChat reject, and returns once this subscriber holds a
// newer token (or, if WeChat says the token still works, the current one).
// All services that report the same stale revision share one fetch. A
// newer revision holding the very token rejected (a repaired bucket writes
// back the tokens it held) is not taken for the new token.
//
// While no refresher answers (a leader change takes a lease TTL), Refresh
// retries with backoff until ctx ends: give it a deadline; the error then
// wraps ErrUnavailable and ctx's error. The refresher's own answers come as
// a *RefreshError, which errors.Is matches to ErrRateLimited (a forced
// refresh of the app ran too recently), ErrUpstream (WeChat did not give a
// new token) or ErrUnknownApp. A key the refresher removed for good gets an
// error wrapping ErrRemoved. After Close it returns ErrClosed.
func (s *Subscriber) Refresh(ctx context.Context, stale uint64) (Token, error) {
	return refresh(ctx, s, stale, "")
}

// followedKey is a key that Refresh and Transport work on: a Subscriber's,
// or one of a Set's.
type followedKey interface {
	Key() string
	Token() Token
	// via is what the key is followed through.
	via() link
	// removedError wraps ErrRemoved while the key is removed.
	removedError() error
	// valueAt returns the value held at revision, if it is the current
	// one or the one before.
	valueAt(revision uint64) (string, bool)
	// waitNewer waits until a value newer than revision is held, or the
	// key is removed (its error then wraps ErrRemoved); ErrClosed after
	// Close.
	waitNewer(ctx context.Context, revision uint64) (Token, error)
	// readKey reads the key from the bucket now, and takes in what it
	// finds.
	readKey(ctx context.Context)
}

// link is what a Subscriber, or a Set, follows its keys through.
type link struct {
	nc       *nats.Conn
	subjects kv.Subjects
	opts     *options
	life     context.Context // ends with Close
}

func (l link) closed() bool { return l.life.Err() != nil }

func (s *Subscriber) via() link {
	return link{nc: s.nc, subjects: s.subjects, opts: &s.opts, life: s.ctx}
}

func (s *Subscriber) readKey(ctx context.Context) {
	if b := s.bucket.Load(); b != nil {
		s.get(ctx, *b)
	}
}

func refresh(ctx context.Context, k followedKey, stale uint64, reason string) (Token, error) {
	l, key := k.via(), k.Key()
	if l.closed() {
		return Token{}, ErrClosed
	}
	if err := k.removedError(); err != nil {
		return k.Token(), err // nothing to refresh: the refresher answers unknown_app
	}
	// Close ends a Refresh under way too, whatever ctx the caller gave.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.life, cancel)()
	rejected, known := k.valueAt(stale)
	req := kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale, Reason: reason})
	delay := 100 * time.Millisecond
	for {
		if t := k.Token(); t.Revision > stale {
			if !known || t.Value != rejected {
				return t, nil // rotated meanwhile, by schedule or by another service's request
			}
			// The rejected value written again at a newer revision (a
			// repaired bucket gives back the tokens it held): it is just
			// as rejected, and the revision to name is now that one.
			stale = t.Revision
			req = kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale, Reason: reason})
			continue
		}
		reply, err := ask(ctx, l, key, req)
		switch {
		case err == nil:
			if reply.Revision <= stale {
				return k.Token(), nil // not rotated: WeChat says the token works
			}
			return awaitRevision(ctx, k, reply.Revision)
		case l.closed():
			return k.Token(), ErrClosed
		case ctx.Err() != nil:
			if retryable(err) {
				return k.Token(), fmt.Errorf("subscriber: refresh %s: %w: %w", key, ErrUnavailable, ctx.Err())
			}
			return k.Token(), fmt.Errorf("subscriber: refresh %s: %w", key, ctx.Err())
		case !retryable(err):
			if removed := k.removedError(); removed != nil {
				return k.Token(), removed // removed while the request was out
			}
			return k.Token(), fmt.Errorf("subscriber: refresh %s: %w", key, err)
		}
		l.opts.logger.Debug("refresh request not answered, retrying", "appid", key, "error", err)
		wait := delay/2 + rand.N(delay/2+1)
		delay = min(2*delay, 2*time.Second)
		switch t, err := waitNewerFor(ctx, k, wait, stale); {
		case err == nil:
			return t, nil
		case errors.Is(err, ErrClosed):
			return k.Token(), ErrClosed
		}
	}
}

// valueAt returns the value held at revision, if it is the current one or
// the one before.
func (s *Subscriber) valueAt(revision uint64) (string, bool) {
	return valueAt(revision, s.current.Load(), s.before.Load())
}

// valueAt returns the value of whichever of held is at revision.
func valueAt(revision uint64, held ...*Token) (string, bool) {
	for _, t := range held {
		if t != nil && t.Revision == revision {
			return t.Value, true
		}
	}
	return "", false
}

// waitNewerFor is k's waitNewer bounded by d.
func waitNewerFor(ctx context.Context, k followedKey, d time.Duration, revision uint64) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return k.waitNewer(ctx, revision)
}

// ask sends one refresh request for key and decodes the reply. An error
// the refresher answered with is returned as the error, a *RefreshError.
func ask(ctx context.Context, l link, key string, req []byte) (kv.RefreshReply, error) {
	rctx, cancel := context.WithTimeout(ctx, l.opts.requestTimeout)
	defer cancel()
	msg, err := l.nc.RequestWithContext(rctx, l.subjects.Refresh(key), req)
	if err != nil {
		return kv.RefreshReply{}, err
	}
	var reply kv.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return kv.RefreshReply{}, fmt.Errorf("subscriber: undecodable refresh reply: %w", err)
	}
	if reply.Error != nil {
		return reply, refreshError(reply.Error)
	}
	return reply, nil
}

// retryable tells failures that a moment may cure (no leader right now, a
// leader stepping down, a timeout) from answers to act on.
func retryable(err error) bool {
	var answered *RefreshError
	if errors.As(err, &answered) {
		return answered.Code == kv.CodeUnavailable
	}
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}

// lateValue is how long Refresh waits for a revision it was told of before
// reading it from the bucket itself.
const lateValue = time.Second

// awaitRevision waits until k holds revision (or a newer one). The new
// value normally arrives within milliseconds of the refresher's reply; if
// it does not (the refresher died between writing and announcing it), it
// is read from the bucket.
func awaitRevision(ctx context.Context, k followedKey, revision uint64) (Token, error) {
	if t, err := waitNewerFor(ctx, k, lateValue, revision-1); err == nil {
		return t, nil
	}
	l := k.via()
	if l.closed() {
		return k.Token(), ErrClosed
	}
	if ctx.Err() != nil {
		return k.Token(), ctx.Err()
	}
	l.opts.logger.Warn("refreshed token not announced in time; reading it from the bucket", "appid", k.Key(), "revision", revision)
	k.readKey(ctx)
	return k.waitNewer(ctx, revision-1)
}
