package platform

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// replayRetry is how long the replay guard waits before it tries again to
// open a bucket it could not: pushes come every 10 minutes, and each try
// may cost a push its answer's time.
const replayRetry = time.Minute

// replayGuard is the callbacks' shared memory of the pushes taken in: the
// replay bucket beside the platform bucket (kv.ReplayBucket), created by
// the refresher. It is a second line: when the bucket cannot be opened
// (NATS away, or a nats.conf from before it that does not let the
// refresher have it) each replica's own guard still refuses the replays
// it sees, and no push is refused for it.
type replayGuard struct {
	js       jetstream.JetStream
	config   jetstream.KeyValueConfig
	now      func() time.Time
	mu       sync.Mutex
	bucket   jetstream.KeyValue // once open
	trying   chan struct{}      // closed when the try under way ends; nil when none is
	failedAt time.Time          // the last failed try
	failure  error
}

// openTimeout bounds the opening of the bucket at start and at reloads:
// one JetStream request, as the refresher's others at start.
const openTimeout = 2 * time.Second

// errReplayOpening answers a push whose bound ran out while another try
// to open the bucket was still under way.
var errReplayOpening = errors.New("publisher: the replay bucket is being opened")

func newReplayGuard(js jetstream.JetStream, cfg Config) *replayGuard {
	return &replayGuard{js: js, config: kv.ReplayConfig(cfg.Bucket, cfg.Replicas), now: cfg.Now}
}

// open creates or opens the bucket, at most once per replayRetry after a
// failure, and one try at a time. A push that comes while a try is under
// way (at start, when WeChat's pushes may come before the bucket is open)
// waits for it within its own bound: the answer takes milliseconds, and a
// push taken in meanwhile would otherwise find no shared guard, and say so
// in a warning, for no fault of anyone's.
func (g *replayGuard) open(ctx context.Context) (jetstream.KeyValue, error) {
	for {
		g.mu.Lock()
		switch {
		case g.bucket != nil:
			defer g.mu.Unlock()
			return g.bucket, nil
		case g.trying != nil:
			trying := g.trying
			g.mu.Unlock()
			select {
			case <-trying:
				continue
			case <-ctx.Done():
				return nil, errReplayOpening
			}
		case g.failure != nil && g.now().Sub(g.failedAt) < replayRetry:
			defer g.mu.Unlock()
			return nil, g.failure
		}
		trying := make(chan struct{})
		g.trying = trying
		g.mu.Unlock()
		b, err := g.js.CreateOrUpdateKeyValue(ctx, g.config)
		g.mu.Lock()
		defer g.mu.Unlock()
		g.trying = nil
		close(trying)
		if err != nil {
			g.failedAt = g.now()
			g.failure = fmt.Errorf("publisher: replay bucket %s (the refresher needs nats.conf's permissions on it; tried again within %s): %w",
				g.config.Bucket, replayRetry, err)
			return nil, g.failure
		}
		g.bucket, g.failure = b, nil
		return b, nil
	}
}

// Taken implements platform.ReplayGuard.
func (g *replayGuard) Taken(ctx context.Context, sig string) (bool, error) {
	b, err := g.open(ctx)
	if err != nil {
		return false, err
	}
	return kv.PushTaken(ctx, b, sig)
}

// Take implements platform.ReplayGuard.
func (g *replayGuard) Take(ctx context.Context, sig, componentAppID string) error {
	b, err := g.open(ctx)
	if err != nil {
		return err
	}
	return kv.TakePush(ctx, b, sig, kv.TakenPush{ComponentAppID: componentAppID, TakenAt: g.now()})
}

// openReplays opens the replay guard's bucket, at start and at reloads,
// so that a refresher that may not have it says so then, not at a push.
func (p *Platforms) openReplays(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	if _, err := p.replays.open(ctx); err != nil {
		p.cfg.Logger.Warn("the replay guard the replicas share is not open; each replica's callback refuses only the replays it sees itself", "error", err)
	}
}
