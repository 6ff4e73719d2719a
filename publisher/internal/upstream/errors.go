package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Error is a failed call: WeChat's errcode and errmsg with what they mean,
// or what went wrong on the way. Its text holds no secret, no token and no
// URL (see Scrub).
type Error struct {
	ErrCode    int    // WeChat's errcode; 0 when WeChat gave none
	ErrMsg     string // WeChat's errmsg, or what went wrong
	HTTPStatus int    // the HTTP status when it was not 200
	Class      Class  // what the failure means for the refresher
	// Means is what ErrCode means from the API that answered it; the
	// token fetch's meaning (TokenCodes) when empty.
	Means string
	cause error
	// unanswered: the request went, or may have, and no answer came
	// back (a timeout, a connection cut): see Unanswered.
	unanswered bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("publisher: upstream: ")
	switch {
	case e.ErrCode != 0:
		fmt.Fprintf(&b, "errcode %d (%s): %s", e.ErrCode, e.Meaning(), e.ErrMsg)
	case e.HTTPStatus != 0:
		fmt.Fprintf(&b, "HTTP %d: %s", e.HTTPStatus, e.ErrMsg)
	default:
		b.WriteString(e.ErrMsg)
	}
	return b.String()
}

// Unwrap returns the transport cause, if any.
func (e *Error) Unwrap() error { return e.cause }

// Meaning is what the errcode means for an operator.
func (e *Error) Meaning() string {
	switch {
	case e.Means != "":
		return e.Means
	case e.ErrCode == 0:
		return "no answer from WeChat"
	}
	return TokenCodes.errorOf(e.ErrCode, "").Means
}

// Class says what a failed call means for the refresher: how soon it may
// call again, and whether a human must act.
type Class string

const (
	// ClassRetry failures are transient: retried with capped exponential
	// backoff and jitter.
	ClassRetry Class = "retry"
	// ClassConfig failures need a human (wrong secret, IP not whitelisted):
	// retried only after a long pause, logged and announced on the failed
	// subject.
	ClassConfig Class = "config"
	// ClassQuota is the exhausted daily quota: no call until it resets at
	// 00:00 China time.
	ClassQuota Class = "quota"
	// ClassToken is a call made with a token refused the token (40001,
	// 40014, 42001): the token goes through the forced-refresh path.
	ClassToken Class = "token"
	// ClassFrequency is WeCom's frequency limit (45009): per minute and
	// per hour, not per day.
	ClassFrequency Class = "frequency"
	// ClassTicket is a third-party platform without a
	// component_verify_ticket that works (none pushed yet, 61005,
	// 61006).
	ClassTicket Class = "ticket"
)

// ClassOf is the class of a failed call; failures that are not WeChat's
// answers (a panic, say) are transient.
func ClassOf(err error) Class {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return ClassRetry
}

// Unanswered reports whether err is a call that got no answer (it timed
// out, or its connection failed or was cut): WeChat may have received it
// and done its work, a new ticket issued say, all the same.
func Unanswered(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.unanswered
}

// ChinaTime is UTC+8, where WeChat's day, and so its daily quotas, starts.
var ChinaTime = time.FixedZone("UTC+8", 8*60*60)

// UntilQuotaReset is the time from now to the next 00:00 China time, when
// WeChat's daily quotas reset.
func UntilQuotaReset(now time.Time) time.Duration {
	c := now.In(ChinaTime)
	midnight := time.Date(c.Year(), c.Month(), c.Day()+1, 0, 0, 0, 0, ChinaTime)
	return midnight.Sub(now)
}
