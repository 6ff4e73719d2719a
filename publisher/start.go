package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/publisher/internal/lease"
)

// Start-up is full of errors that pass by themselves: a NATS server that is
// not up yet, a fresh cluster with no JetStream meta leader, too few peers
// for three replicas, a bucket another replica is creating at the same
// moment. A refresher that exited on them would crash-loop under its
// supervisor, so Run retries them with backoff while Ready says what it
// waits for. What retrying cannot fix (a bucket whose configuration
// conflicts with this refresher's, a NATS user that may not manage the
// buckets) ends Run with an error that says what to do.

const (
	startRetryMin = 250 * time.Millisecond
	startRetryMax = 2 * time.Second
	// requestTimeout bounds each JetStream request that runs without a
	// deadline of its own, those of start-up among them. A request sent
	// while a fresh cluster elects its meta leader can go unanswered
	// although the next one, a moment later, succeeds: a short bound lets
	// the refresher start within a couple of seconds of the cluster, not
	// a full bucket.Timeout later. It bounds each request, not an attempt of
	// several, so that a cluster that is merely slow gets through.
	requestTimeout = 2 * time.Second
	// startLogEvery spaces the warnings of a start-up that keeps failing.
	startLogEvery = 5 * time.Second
)

// startup is the refresher's start: it waits for NATS and opens the
// buckets, retrying, and says meanwhile what it waits for (err).
type startup struct {
	nc      *nats.Conn
	log     *slog.Logger
	waiting atomic.Pointer[error] // why start-up is still retrying
}

// err is why start-up is still retrying, or nil.
func (s *startup) err() error {
	if err := s.waiting.Load(); err != nil {
		return *err
	}
	return nil
}

// setWaiting records why the refresher is not running yet.
func (s *startup) setWaiting(err error) {
	if err != nil {
		err = fmt.Errorf("publisher: starting, retrying: %w", err)
		s.waiting.Store(&err)
		return
	}
	s.waiting.Store(nil)
}

// open waits for NATS and makes attempts until one succeeds, ctx ends, or
// an error needs a human. Each attempt (attempt) opens what is not open
// yet.
func (s *startup) open(ctx context.Context, attempt func(context.Context) error) error {
	var logged time.Time
	for n := 1; ; n++ {
		// Waiting for the connection is not a failed attempt: the buckets
		// are tried the moment it is up. The connection reports its own
		// trouble.
		if err := s.awaitConnected(ctx); err != nil {
			return err
		}
		began, since := time.Now(), s.nc.LastError()
		err := attempt(ctx)
		if err == nil {
			s.setWaiting(nil)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if fatal := needsHuman(s.nc, since, err); fatal != nil {
			return fatal
		}
		s.setWaiting(err)
		if time.Since(logged) >= startLogEvery {
			s.log.Warn("cannot open the buckets yet; retrying", "attempt", n, "error", err)
			logged = time.Now()
		}
		// An attempt that timed out has waited already: on a cluster that
		// is forming, the next one should go as soon as it may succeed.
		t := time.NewTimer(max(retryDelay(n, startRetryMin, startRetryMax)-time.Since(began), startRetryMin))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// open waits for NATS and opens the token bucket, the platform bucket
// when the apps have a platform, and the lease bucket (see startup.open).
func (r *Refresher) open(ctx context.Context) (jetstream.KeyValue, *lease.Lease, error) {
	var tokens jetstream.KeyValue // kept once open: attempts go on from there
	var l *lease.Lease
	err := r.start.open(ctx, func(ctx context.Context) (err error) {
		if tokens == nil {
			if tokens, err = r.creds.Open(ctx); err != nil {
				return err
			}
		}
		if hasPlatforms(r.cfg.Apps) && !r.platforms.Opened() {
			if err := r.platforms.Open(ctx); err != nil {
				return err
			}
		}
		l, err = lease.Open(ctx, r.nc, r.js, lease.Config{
			TokenBucket: r.cfg.Bucket, TTL: r.cfg.LeaseTTL, UpstreamTimeout: r.cfg.UpstreamTimeout, Replicas: r.cfg.Replicas,
			Instance: r.cfg.Instance, Logger: r.log, HasTokens: r.creds.HasTokens,
		})
		return err
	})
	return tokens, l, err
}

// retryDelay is the pause after the given number of failed attempts:
// exponential, capped, half of it random so that replicas that failed
// together do not retry together.
func retryDelay(attempts int, base, ceiling time.Duration) time.Duration {
	d := min(base<<min(max(attempts-1, 0), 16), ceiling)
	return d/2 + rand.N(d/2+1)
}

// awaitConnected returns once the connection is up, and an error that
// needs a human if it is closed for good.
func (s *startup) awaitConnected(ctx context.Context) error {
	changed := s.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer s.nc.RemoveStatusListener(changed)
	for {
		switch st := s.nc.Status(); st {
		case nats.CONNECTED:
			return nil
		case nats.CLOSED:
			return &humanError{fmt.Errorf("publisher: the NATS connection is closed: %v", s.nc.LastError())}
		default:
			s.setWaiting(fmt.Errorf("not connected to NATS (%s)", st))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// humanError is a start-up error that retrying cannot fix.
type humanError struct{ err error }

func (e *humanError) Error() string { return e.err.Error() }
func (e *humanError) Unwrap() error { return e.err }

// needsHuman returns the error to stop on when err is one retrying cannot
// fix, saying what to do about it; otherwise nil. since is the
// connection's last error before the attempt that failed with err.
func needsHuman(nc *nats.Conn, since, err error) error {
	if he, me := (*humanError)(nil), (*lease.MisconfiguredError)(nil); errors.As(err, &he) || errors.As(err, &me) || errors.Is(err, bucket.ErrReadOnlyCopy) {
		return err
	}
	return bucket.NeedsHuman(nc, since, err)
}
