package subscriber

import (
	"errors"
	"fmt"
	"time"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// Errors a service checks with errors.Is.
var (
	// ErrClosed is returned by calls on a closed Subscriber.
	ErrClosed = errors.New("subscriber: closed")
	// ErrExpired is wrapped by Current when the token it holds has
	// expired: the refresher has not replaced it in time.
	ErrExpired = errors.New("subscriber: token expired")
	// ErrInvalidOption is wrapped by New's error for an option it refuses.
	ErrInvalidOption = errors.New("subscriber: invalid option")
	// ErrRemoved is wrapped by Current, Refresh, Transport's requests and
	// New when the refresher removed the key for good: the token of an
	// authorizer that withdrew its authorization from the platform. A value
	// stored under the key later (the account authorizes again) ends it.
	ErrRemoved = errors.New("subscriber: key removed")
	// ErrUnknownKey is wrapped by a Set's calls for a key it holds
	// nothing of: one the bucket has no value of (yet), or, with
	// WithKeys, one not among its keys.
	ErrUnknownKey = errors.New("subscriber: no such key")

	// The refresher's answers to a refresh request that failed, wrapped
	// by a *RefreshError.

	// ErrRateLimited: a forced refresh of the app ran too recently; the
	// token named is the current one.
	ErrRateLimited = errors.New("subscriber: refresh rate-limited")
	// ErrUnknownApp: the refresher keeps no token for the app.
	ErrUnknownApp = errors.New("subscriber: the refresher has no such app")
	// ErrUpstream: WeChat did not give a new token (it failed, or the
	// app waits out an earlier failure).
	ErrUpstream = errors.New("subscriber: WeChat gave no new token")
	// ErrUnavailable: no refresher answered (no leader right now, or one
	// stepping down) until the request's context ended.
	ErrUnavailable = errors.New("subscriber: no refresher answered")
)

// RefreshError is the refresher's answer to a refresh request that failed:
// its error code and message, as the wire contract has them. errors.Is
// matches it to the sentinel of its code (ErrRateLimited, ErrUnknownApp,
// ErrUpstream, ErrUnavailable).
type RefreshError struct {
	Code    string // kv.CodeRateLimited, kv.CodeUnknownApp, ...
	Message string
	// RetryAfter, when rate-limited, is how long until a forced refresh
	// of the key may be asked for again; 0 when the refresher did not say.
	RetryAfter time.Duration
}

func (e *RefreshError) Error() string { return "subscriber: refresher: " + e.Code + ": " + e.Message }

// Is matches e to the sentinel of its code.
func (e *RefreshError) Is(target error) bool {
	switch e.Code {
	case kv.CodeRateLimited:
		return target == ErrRateLimited
	case kv.CodeUnknownApp:
		return target == ErrUnknownApp
	case kv.CodeUpstream:
		return target == ErrUpstream
	case kv.CodeUnavailable:
		return target == ErrUnavailable
	}
	return false
}

func refreshError(e *kv.ReplyError) error {
	return &RefreshError{Code: e.Code, Message: e.Message, RetryAfter: time.Duration(e.RetryAfter) * time.Second}
}

// TokenRejected reports whether a WeChat errcode says that an API call's
// access_token is not, or no longer, valid: 40001 (invalid credential),
// 40014 (invalid access_token) or 42001 (access_token expired). These are
// the answers after which a service calls Refresh; Transport does it by
// itself.
func TokenRejected(errcode int) bool { return wechaterr.TokenRejected(errcode) }

// invalidOption wraps ErrInvalidOption.
func invalidOption(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidOption, fmt.Sprintf(format, args...))
}
