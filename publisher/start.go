package publisher

import (
	"context"
	"errors"
	"fmt"
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

// open waits for NATS and opens the token and lease buckets, retrying
// until they open, ctx ends, or an error needs a human.
func (r *Refresher) open(ctx context.Context) (jetstream.KeyValue, *lease.Lease, error) {
	var logged time.Time
	var bucket jetstream.KeyValue // kept once open: attempts go on from there
	for attempt := 1; ; attempt++ {
		// Waiting for the connection is not a failed attempt: the buckets
		// are tried the moment it is up. The connection reports its own
		// trouble.
		if err := r.awaitConnected(ctx); err != nil {
			return nil, nil, err
		}
		began, since := time.Now(), r.nc.LastError()
		l, err := r.openOnce(ctx, &bucket)
		if err == nil {
			r.waiting.Store(nil)
			r.bucket.Store(&bucket)
			return bucket, l, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if fatal := needsHuman(r.nc, since, err); fatal != nil {
			return nil, nil, fatal
		}
		r.setWaiting(err)
		if time.Since(logged) >= startLogEvery {
			r.log.Warn("cannot open the buckets yet; retrying", "attempt", attempt, "error", err)
			logged = time.Now()
		}
		// An attempt that timed out has waited already: on a cluster that
		// is forming, the next one should go as soon as it may succeed.
		t := time.NewTimer(max(retryDelay(attempt, startRetryMin, startRetryMax)-time.Since(began), startRetryMin))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-t.C:
		}
	}
}

// openOnce makes one attempt to open what is not open yet: the token
// bucket (kept in *tokens once open), then the lease. Each request is
// bounded by requestTimeout.
func (r *Refresher) openOnce(ctx context.Context, tokens *jetstream.KeyValue) (*lease.Lease, error) {
	if *tokens == nil {
		b, err := bucket.Open(ctx, r.js, r.bucketConfig())
		if err != nil {
			return nil, fmt.Errorf("publisher: %w", err)
		}
		if st, err := b.Status(ctx); err == nil {
			if kvs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
				r.life.created.Store(kvs.StreamInfo().Created.UnixNano())
			}
		}
		*tokens = b
	}
	if hasPlatforms(r.cfg.Apps) && r.platformBucket.Load() == nil {
		b, err := r.openPlatformBucket(ctx)
		if err != nil {
			return nil, err
		}
		r.platformBucket.Store(&b)
	}
	return lease.Open(ctx, r.nc, r.js, lease.Config{
		TokenBucket: r.cfg.Bucket, TTL: r.cfg.LeaseTTL, UpstreamTimeout: r.cfg.UpstreamTimeout, Replicas: r.cfg.Replicas,
		Instance: r.cfg.Instance, Logger: r.log, HasTokens: func() bool { return r.life.lastRev.Load() > 0 },
	})
}

func (r *Refresher) bucketConfig() bucket.Config {
	return bucket.Config{Name: r.cfg.Bucket, Replicas: r.cfg.Replicas, History: r.cfg.History, Subjects: r.subjects}
}

// setWaiting records why the refresher is not running yet, for Ready.
func (r *Refresher) setWaiting(err error) {
	err = fmt.Errorf("publisher: starting, retrying: %w", err)
	r.waiting.Store(&err)
}

// awaitConnected returns once the connection is up, and an error that
// needs a human if it is closed for good.
func (r *Refresher) awaitConnected(ctx context.Context) error {
	changed := r.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer r.nc.RemoveStatusListener(changed)
	for {
		switch st := r.nc.Status(); st {
		case nats.CONNECTED:
			return nil
		case nats.CLOSED:
			return &humanError{fmt.Errorf("publisher: the NATS connection is closed: %v", r.nc.LastError())}
		default:
			r.setWaiting(fmt.Errorf("not connected to NATS (%s)", st))
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
	if he, me := (*humanError)(nil), (*lease.MisconfiguredError)(nil); errors.As(err, &he) || errors.As(err, &me) {
		return err
	}
	// JetStream's error codes (nats-server's errors.json) for a bucket
	// that cannot be made what this refresher asks for.
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10052, 10061: // invalid stream configuration; replicas cannot be updated
			return fmt.Errorf("%w: an existing bucket's configuration cannot be changed to this refresher's "+
				"(--replicas, --history): start it with the bucket's settings, or delete the bucket "+
				"(nats kv del) and let wxtoken create it again", err)
		case 10074: // replicas > 1 not supported in non-clustered mode
			return fmt.Errorf("%w: --replicas above 1 needs a NATS cluster; this server is not clustered", err)
		case 10065: // subjects overlap with an existing stream
			return fmt.Errorf("%w: another stream captures the bucket's subjects: remove it or use another --bucket", err)
		case jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return fmt.Errorf("%w: enable JetStream for this NATS account", err)
		}
	}
	// A request the server refuses for lack of permission gets no answer;
	// the refusal comes back apart, as the connection's last error. Any
	// refusal during the attempt counts: a JetStream request denied, or
	// the reply subject (a wrong --inbox-prefix) refused.
	if last := nc.LastError(); !errors.Is(last, since) && errors.Is(last, nats.ErrPermissionViolation) {
		return fmt.Errorf("publisher: the NATS user may not do what the refresher needs (%v): give it the refresher's "+
			"permissions of nats.conf, with its inbox prefix", last)
	}
	return nil
}
