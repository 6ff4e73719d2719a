package loop

import (
	"encoding/binary"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// maxConcurrentRotations bounds the rotations one check runs at once; the
// pacer bounds their rate.
const maxConcurrentRotations = 32

// check is the cron job: it rotates every credential that is due, and
// makes sure every other one has its timer set for when it falls due. The
// timers do the punctual work (a token shorter-lived than the schedule's
// period is replaced in time); the check is the sweep that misses nothing.
func (c *Credentials) check(t *term) {
	now := c.now()
	sem := make(chan struct{}, maxConcurrentRotations)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, cr := range c.list() {
		if !cr.dueOrArm(now, t.ending, c.cfg.AfterFunc, c.wakeUp(t, cr)) {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-t.ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			c.rotateIfDue(t, cr)
		})
	}
}

// rotateIfDue rotates the credential if it is due, and waits for it.
func (c *Credentials) rotateIfDue(t *term, cr *credential) {
	f := cr.startIfDue(c.now(), func(f *flight, base outcome, reason string) bool {
		return c.fly(t, cr, f, modeScheduled, reason, base)
	})
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-t.ctx.Done():
	}
}

// plan sets the credential's timer for when it falls due. It is called
// whenever what the loop knows of it changed.
func (c *Credentials) plan(t *term, cr *credential) {
	cr.plan(c.now(), t.ending, c.cfg.AfterFunc, c.wakeUp(t, cr))
}

// wakeUp is what the credential's timer does when it goes off.
func (c *Credentials) wakeUp(t *term, cr *credential) func() {
	return func() { t.spawn(func() { c.rotateIfDue(t, cr) }) }
}

// window is how long before expiry a value of the given lifetime from src
// is replaced (Window).
func (c *Credentials) window(src Source, lifetime time.Duration) time.Duration {
	return Window(src, c.cfg.RefreshBefore, lifetime)
}

// Window is how long before expiry a value of the given lifetime from src
// is replaced: refreshBefore, or less if its source says so, cut to half
// the lifetime for short-lived values.
func Window(src Source, refreshBefore, lifetime time.Duration) time.Duration {
	return min(src.Window(refreshBefore), lifetime/2)
}

// windowOf is window for src's values.
func (c *Credentials) windowOf(src Source) func(time.Duration) time.Duration {
	return func(lifetime time.Duration) time.Duration { return c.window(src, lifetime) }
}

// spreadOf returns a duration in [0, span) fixed by key and rev. Refreshing
// each value a little earlier by it keeps credentials fetched in the same
// second from falling due in the same second forever after.
func spreadOf(key string, rev uint64, span time.Duration) time.Duration {
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write(binary.LittleEndian.AppendUint64(nil, rev))
	return time.Duration(h.Sum64() % uint64(span))
}

// retryDelay is the pause after the given number of consecutive transient
// failures: exponential, capped, half of it random so that replicas and
// credentials that failed together do not retry together.
func retryDelay(failures int, base, ceiling time.Duration) time.Duration {
	d := min(base<<min(max(failures-1, 0), 16), ceiling)
	return d/2 + rand.N(d/2+1)
}

// quiet holds the credential's next scheduled fetch back until askAgain,
// after WeChat answered with the value it holds. Nothing is written: the
// bucket already holds that value.
func (c *Credentials) quiet(cr *credential, askAgain time.Time) {
	cr.quiet(askAgain)
	c.log.Info("WeChat answered with the value already stored; nothing to write", "key", cr.key,
		"next_attempt", askAgain.UTC().Format(time.RFC3339))
}

// cronLogger carries cron's messages to slog. A panic recovered by cron is
// logged as an error, its text and stack scrubbed of every secret first.
type cronLogger struct {
	log   *slog.Logger
	scrub func() upstream.Scrubber
}

func (l cronLogger) Info(msg string, keysAndValues ...any) {
	l.log.Debug("cron: "+msg, keysAndValues...)
}

func (l cronLogger) Error(err error, msg string, keysAndValues ...any) {
	for i, v := range keysAndValues {
		if s, ok := v.(string); ok {
			keysAndValues[i] = l.scrub().Scrub(s)
		}
	}
	l.log.Error("cron: "+msg, append([]any{"error", l.scrub().Scrub(err.Error())}, keysAndValues...)...)
}

var _ cron.Logger = cronLogger{}
