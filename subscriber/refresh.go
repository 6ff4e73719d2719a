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
	return s.refresh(ctx, stale, "")
}

func (s *Subscriber) refresh(ctx context.Context, stale uint64, reason string) (Token, error) {
	if s.isClosed() {
		return Token{}, ErrClosed
	}
	if err := s.removedError(); err != nil {
		return s.Token(), err // nothing to refresh: the refresher answers unknown_app
	}
	// Close ends a Refresh under way too, whatever ctx the caller gave.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	rejected, known := s.valueAt(stale)
	req := kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale, Reason: reason})
	delay := 100 * time.Millisecond
	for {
		if t := s.Token(); t.Revision > stale {
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
		reply, err := s.ask(ctx, req)
		switch {
		case err == nil:
			if reply.Revision <= stale {
				return s.Token(), nil // not rotated: WeChat says the token works
			}
			return s.awaitRevision(ctx, reply.Revision)
		case s.isClosed():
			return s.Token(), ErrClosed
		case ctx.Err() != nil:
			if retryable(err) {
				return s.Token(), fmt.Errorf("subscriber: refresh %s: %w: %w", s.key, ErrUnavailable, ctx.Err())
			}
			return s.Token(), fmt.Errorf("subscriber: refresh %s: %w", s.key, ctx.Err())
		case !retryable(err):
			if removed := s.removedError(); removed != nil {
				return s.Token(), removed // removed while the request was out
			}
			return s.Token(), fmt.Errorf("subscriber: refresh %s: %w", s.key, err)
		}
		s.opts.logger.Debug("refresh request not answered, retrying", "appid", s.key, "error", err)
		wait := delay/2 + rand.N(delay/2+1)
		delay = min(2*delay, 2*time.Second)
		switch t, err := s.waitNewerFor(ctx, wait, stale); {
		case err == nil:
			return t, nil
		case errors.Is(err, ErrClosed):
			return s.Token(), ErrClosed
		}
	}
}

// valueAt returns the value held at revision, if it is the current one or
// the one before.
func (s *Subscriber) valueAt(revision uint64) (string, bool) {
	for _, t := range []*Token{s.current.Load(), s.before.Load()} {
		if t != nil && t.Revision == revision {
			return t.Value, true
		}
	}
	return "", false
}

// waitNewerFor is waitNewer bounded by d.
func (s *Subscriber) waitNewerFor(ctx context.Context, d time.Duration, revision uint64) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return s.waitNewer(ctx, revision)
}

// ask sends one refresh request and decodes the reply. An error the
// refresher answered with is returned as the error, a *RefreshError.
func (s *Subscriber) ask(ctx context.Context, req []byte) (kv.RefreshReply, error) {
	rctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
	defer cancel()
	msg, err := s.nc.RequestWithContext(rctx, s.subjects.Refresh(s.key), req)
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

// awaitRevision waits until the subscriber holds revision (or a newer one).
// The new value normally arrives within milliseconds of the refresher's
// reply; if it does not (the refresher died between writing and announcing
// it), it is read from the bucket.
func (s *Subscriber) awaitRevision(ctx context.Context, revision uint64) (Token, error) {
	if t, err := s.waitNewerFor(ctx, lateValue, revision-1); err == nil {
		return t, nil
	}
	if s.isClosed() {
		return s.Token(), ErrClosed
	}
	if ctx.Err() != nil {
		return s.Token(), ctx.Err()
	}
	if b := s.bucket.Load(); b != nil {
		s.opts.logger.Warn("refreshed token not announced in time; reading it from the bucket", "appid", s.key, "revision", revision)
		s.get(ctx, *b)
	}
	return s.waitNewer(ctx, revision-1)
}
