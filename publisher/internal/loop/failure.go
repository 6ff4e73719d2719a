package loop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// failed records a failed rotation of cr and decides when the next fetch
// may happen: by the failure's class, or by the source's FailureHook. a is
// the attempt that failed, nil for a failure that was no fetch.
func (c *Credentials) failed(cr *credential, a *Attempt, err error) {
	class := upstream.ClassOf(err)
	var gen uint64
	if a != nil {
		gen = a.gen
	}
	failures, refused := cr.failing(gen, class, a != nil)
	if !refused {
		// Refused with a secret (or refresh token) replaced meanwhile: no
		// pause, the next fetch goes at once with the new one.
		c.log.Info("token fetch refused with the secret a reload replaced; trying the new one", "appid", cr.key)
		return
	}
	now := c.now()
	var wait time.Duration
	switch class {
	case upstream.ClassConfig:
		wait = c.cfg.ConfigErrorBackoff
	case upstream.ClassQuota:
		// All credentials resume at midnight; the pacer spreads them.
		wait = upstream.UntilQuotaReset(now)
	default:
		wait = retryDelay(failures, c.cfg.RetryBackoff, c.cfg.RetryBackoffMax)
	}
	if h := cr.id().hook; h != nil {
		if w, ok := h.Failed(a, err, failures, now); ok {
			wait = w
		}
	}
	cr.pause(now.Add(wait), err)

	if class == upstream.ClassRetry {
		c.log.Warn("token not rotated, will retry", "appid", cr.key, "error", err,
			"failures", failures, "retry_in", wait.Round(time.Millisecond))
		return
	}
	var ue *upstream.Error
	errors.As(err, &ue)
	msg := "token fetch refused: " + ue.Meaning()
	if fix := upstream.SecretFix(err, cr.key); fix != "" {
		msg += ": " + fix
	}
	c.log.Error(msg, "appid", cr.key, "errcode", ue.ErrCode,
		"errmsg", ue.ErrMsg, "class", string(class), "next_attempt", now.Add(wait).Format(time.RFC3339))
	c.publishFailure(cr.key, ue.ErrCode, ue.ErrMsg, class, now.Add(wait))
}

// failedUnlessDeclined records err as cr's failure, unless the source
// declined the call (nothing failed) or the term ended.
func (c *Credentials) failedUnlessDeclined(cr *credential, a *Attempt, err error) {
	var declined *Declined
	if errors.As(err, &declined) || errors.Is(err, ErrEnding) {
		return
	}
	c.failed(cr, a, err)
}

// publishFailure publishes a failure event on key's Failed subject: at
// once, or, with a FailureDetail, once it has added what it may.
func (c *Credentials) publishFailure(key string, errcode int, errmsg string, class upstream.Class, next time.Time) {
	appid, kind := kv.SplitKey(key)
	ev := kv.FailureEvent{AppID: appid, Kind: kind, ErrCode: errcode, ErrMsg: errmsg, Class: string(class), NextAttempt: next.UTC()}
	var detail func(context.Context, *kv.FailureEvent)
	if c.cfg.FailureDetail != nil {
		detail = c.cfg.FailureDetail(ev)
	}
	if t := c.term.Load(); detail != nil && t != nil && t.spawn(func() {
		detail(t.work, &ev)
		c.publishEvent(key, ev)
	}) {
		return
	}
	c.publishEvent(key, ev)
}

// publishEvent publishes ev on key's Failed subject.
func (c *Credentials) publishEvent(key string, ev kv.FailureEvent) {
	data, _ := json.Marshal(ev)
	if err := c.cfg.Conn.Publish(c.subjects.Failed(key), data); err != nil {
		c.log.Warn("failure event not published", "key", key, "error", err)
	}
}

// backoffError answers a fetch asked for while the credential waits after
// a failure.
type backoffError struct {
	until time.Time
	last  error
}

func (e *backoffError) Error() string {
	return fmt.Sprintf("publisher: no fetch before %s after: %v", e.until.UTC().Format(time.RFC3339), e.last)
}

func (e *backoffError) Unwrap() error { return e.last }

// errPanicked is the outcome of a rotation that panicked.
var errPanicked = errors.New("publisher: rotation failed with a panic (logged)")

// logPanic logs a recovered panic and its stack, scrubbed of secrets.
func (c *Credentials) logPanic(p any) {
	scrub := c.scrub()
	c.log.Error("recovered from a panic", "panic", scrub.Scrub(fmt.Sprint(p)),
		"stack", scrub.Scrub(string(debug.Stack())))
}

// LogPanic logs a panic recovered elsewhere in the refresher as the loop
// logs its own.
func (c *Credentials) LogPanic(p any) { c.logPanic(p) }

func (c *Credentials) scrub() upstream.Scrubber { return c.cfg.Scrubber() }
