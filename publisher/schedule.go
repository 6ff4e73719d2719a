package publisher

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/kv"
)

// maxConcurrentRotations bounds the rotations one check runs at once; the
// pacer bounds their rate.
const maxConcurrentRotations = 32

// check is the cron job: it rotates every app that is due, and makes sure
// every other app has its timer set for when it falls due. The timers do
// the punctual work (a token shorter-lived than the schedule's period is
// replaced in time); the check is the sweep that misses nothing.
func (r *Refresher) check(t *term) {
	now := r.cfg.Clock.now()
	sem := make(chan struct{}, maxConcurrentRotations)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, a := range r.credentialList() {
		a.mu.Lock()
		due := a.due(now)
		if due.After(now) {
			r.arm(t, a, due, now)
		}
		a.mu.Unlock()
		if due.After(now) {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-t.ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r.rotateIfDue(t, a)
		}()
	}
}

// parseSchedule parses the cron spec of the refresh check. Its error says
// what to write, then what cron found wrong.
func parseSchedule(spec string) (cron.Schedule, error) {
	schedule, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: write @every 30s or five cron fields "+
			"(minute hour day-of-month month day-of-week, such as */5 * * * *); %w", spec, err)
	}
	return schedule, nil
}

// rotateIfDue rotates the app's token if it is due, and waits for it.
func (r *Refresher) rotateIfDue(t *term, a *credential) {
	a.mu.Lock()
	now := r.cfg.Clock.now()
	if a.due(now).After(now) {
		a.mu.Unlock()
		return
	}
	reason := kv.ReasonScheduled
	if a.rec == nil {
		reason = kv.ReasonInitial
	}
	f, _ := r.startOrJoin(t, a, modeScheduled, reason)
	a.mu.Unlock()
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-t.ctx.Done():
	}
}

// plan sets the app's timer for when it falls due. It is called whenever
// what the refresher knows of an app changed.
func (r *Refresher) plan(t *term, a *credential) {
	now := r.cfg.Clock.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flight != nil {
		return // the flight plans again when it lands
	}
	r.arm(t, a, a.due(now), now)
}

// arm sets the app's timer to due, unless it is already set no later.
// Callers hold a.mu.
func (r *Refresher) arm(t *term, a *credential, due, now time.Time) {
	// An ended term (a caller may hold one) must not touch the timer the
	// next term set.
	if a.removed || t.ending() {
		return
	}
	if a.timer != nil {
		if !a.timerAt.After(due) {
			return
		}
		a.timer.Stop()
		a.timer = nil
	}
	a.timerGen++
	gen := a.timerGen
	a.timerAt = due
	a.timer = r.cfg.Clock.afterFunc(max(due.Sub(now), 0), func() {
		a.mu.Lock()
		if a.timerGen == gen {
			a.timer = nil
		}
		a.mu.Unlock()
		t.spawn(func() { r.rotateIfDue(t, a) })
	})
}

// disarm stops the timers of a term that ends.
func (r *Refresher) disarm() {
	for _, a := range r.credentialList() {
		a.mu.Lock()
		if a.timer != nil {
			a.timer.Stop()
			a.timer = nil
		}
		a.mu.Unlock()
	}
}

// window is how long before expiry a token of the given lifetime is
// replaced: RefreshBefore, or less if its source says so, cut to half the
// lifetime for short-lived tokens.
func (r *Refresher) window(src source, lifetime time.Duration) time.Duration {
	return min(src.window(r.cfg.RefreshBefore), lifetime/2)
}

// quiet holds the credential's next scheduled fetch back until askAgain,
// after WeChat answered with the value it holds. Nothing is written: the
// bucket already holds that value.
func (r *Refresher) quiet(a *credential, askAgain time.Time) {
	a.mu.Lock()
	a.quietUntil = askAgain
	a.mu.Unlock()
	r.log.Info("WeChat answered with the value already stored; nothing to write", "key", a.key,
		"next_attempt", askAgain.UTC().Format(time.RFC3339))
}

// spreadOf returns a duration in [0, span) fixed by appid and rev. Refreshing
// each token a little earlier by it keeps apps whose tokens were fetched in
// the same second from falling due in the same second forever after.
func spreadOf(appid string, rev uint64, span time.Duration) time.Duration {
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(appid))
	h.Write(binary.LittleEndian.AppendUint64(nil, rev))
	return time.Duration(h.Sum64() % uint64(span))
}

// retryDelay is the pause after the given number of consecutive transient
// failures: exponential, capped, half of it random so that replicas and
// apps that failed together do not retry together.
func retryDelay(failures int, base, ceiling time.Duration) time.Duration {
	d := min(base<<min(max(failures-1, 0), 16), ceiling)
	return d/2 + rand.N(d/2+1)
}

// cronLogger carries cron's messages to slog. A panic recovered by cron is
// logged as an error, its text and stack scrubbed of every AppSecret first.
type cronLogger struct {
	log     *slog.Logger
	secrets *secrets
}

func (l cronLogger) Info(msg string, keysAndValues ...any) {
	l.log.Debug("cron: "+msg, keysAndValues...)
}

func (l cronLogger) Error(err error, msg string, keysAndValues ...any) {
	for i, v := range keysAndValues {
		if s, ok := v.(string); ok {
			keysAndValues[i] = l.secrets.scrubber().Scrub(s)
		}
	}
	l.log.Error("cron: "+msg, append([]any{"error", l.secrets.scrubber().Scrub(err.Error())}, keysAndValues...)...)
}

var _ cron.Logger = cronLogger{}
