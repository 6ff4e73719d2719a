package publisher

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// failed records a failed fetch and decides when the next may happen.
// used is the secret the fetch used, if it was one.
func (r *Refresher) failed(a *credential, err error, used Secret) {
	class := upstream.ClassOf(err)
	var ue *upstream.Error
	errors.As(err, &ue)
	now := r.cfg.Clock.now()
	a.mu.Lock()
	if class == upstream.ClassConfig && !used.IsZero() && used.Reveal() != a.secret.Reveal() {
		// Refused with a secret a reload replaced meanwhile: no pause,
		// the next fetch goes at once with the new one.
		a.mu.Unlock()
		r.log.Info("token fetch refused with the secret a reload replaced; trying the new one", "appid", a.key)
		return
	}
	a.failures++
	var wait time.Duration
	var paused *pausedError
	switch {
	case errors.As(err, &paused):
		wait = max(paused.until.Sub(now), 0)
	case class == upstream.ClassConfig:
		wait = r.cfg.ConfigErrorBackoff
	case class == upstream.ClassQuota:
		// All apps resume at midnight; the pacer spreads them.
		wait = upstream.UntilQuotaReset(now)
	case class == upstream.ClassTicket:
		// A push ends the wait (observeTicket).
		wait = ticketWait
	case class == upstream.ClassFrequency:
		wait = untilFrequencyReset(now, a.failures)
	default:
		wait = retryDelay(a.failures, r.cfg.RetryBackoff, r.cfg.RetryBackoffMax)
	}
	a.retryAt, a.lastErr = now.Add(wait), err
	failures := a.failures
	a.mu.Unlock()

	if class == upstream.ClassRetry {
		r.log.Warn("token not rotated, will retry", "appid", a.key, "error", err,
			"failures", failures, "retry_in", wait.Round(time.Millisecond))
		return
	}
	r.log.Error("token fetch refused: "+ue.Meaning(), "appid", a.key, "errcode", ue.ErrCode,
		"errmsg", ue.ErrMsg, "class", string(class), "next_attempt", now.Add(wait).Format(time.RFC3339))
	appid, kind := kv.SplitKey(a.key)
	r.publishFailure(kv.FailureEvent{
		AppID: appid, Kind: kind, ErrCode: ue.ErrCode, ErrMsg: ue.ErrMsg, Class: string(class), NextAttempt: now.Add(wait).UTC(),
	})
}

// publishFailure publishes ev on its app's Failed subject.
func (r *Refresher) publishFailure(ev kv.FailureEvent) {
	data, _ := json.Marshal(ev)
	key := kv.Key(ev.AppID, ev.Kind)
	if err := r.nc.Publish(r.subjects.Failed(key), data); err != nil {
		r.log.Warn("failure event not published", "key", key, "error", err)
	}
}

// backoffError answers a fetch asked for while the app waits after a failure.
type backoffError struct {
	until time.Time
	last  error
}

func (e *backoffError) Error() string {
	return fmt.Sprintf("publisher: no fetch before %s after: %v", e.until.UTC().Format(time.RFC3339), e.last)
}

func (e *backoffError) Unwrap() error { return e.last }

// errEnding answers what the ending of a leadership term cut short.
var errEnding = errors.New("publisher: refresher is stopping or lost its leadership")

// errPanicked is the outcome of a rotation that panicked.
var errPanicked = errors.New("publisher: rotation failed with a panic (logged)")

// logPanic logs a recovered panic and its stack, scrubbed of secrets.
func (r *Refresher) logPanic(p any) {
	scrub := r.secrets.scrubber()
	r.log.Error("recovered from a panic", "panic", scrub.Scrub(fmt.Sprint(p)),
		"stack", scrub.Scrub(string(debug.Stack())))
}
