package subscriber

import (
	"log/slog"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Option configures a Subscriber. New refuses an option it cannot use with
// an error that wraps ErrInvalidOption.
type Option func(*options) error

type options struct {
	bucket         string
	subjectPrefix  string
	logger         *slog.Logger
	onRotate       func(*Subscriber, Token)
	onError        func(*Subscriber, error)
	requestTimeout time.Duration
}

func defaultOptions() options {
	return options{
		bucket:         kv.DefaultBucket,
		subjectPrefix:  kv.DefaultSubjectPrefix,
		logger:         slog.New(slog.DiscardHandler),
		requestTimeout: 10 * time.Second,
	}
}

// WithBucket names the token bucket; kv.DefaultBucket by default.
func WithBucket(name string) Option {
	return func(o *options) error {
		if err := kv.ValidateBucketName(name); err != nil {
			return invalidOption("WithBucket: %v", err)
		}
		o.bucket = name
		return nil
	}
}

// WithSubjectPrefix sets the subject prefix; kv.DefaultSubjectPrefix by
// default.
func WithSubjectPrefix(prefix string) Option {
	return func(o *options) error {
		if err := kv.ValidateSubjectPrefix(prefix); err != nil {
			return invalidOption("WithSubjectPrefix: %v", err)
		}
		o.subjectPrefix = prefix
		return nil
	}
}

// WithLogger makes the subscriber log to l. It is silent by default.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return invalidOption("WithLogger: nil logger")
		}
		o.logger = l
		return nil
	}
}

// OnRotate calls fn with each new token, the first included, once New has
// returned.
//
// Callbacks (OnRotate's and OnError's) run one at a time on the
// subscriber's callback goroutine, under no lock the subscriber needs: fn
// may call Refresh, Token, Close, or make WeChat calls through Transport.
// They get the Subscriber, so that they need no variable set after New. If
// tokens arrive faster than fn returns, fn gets the newest and the ones
// between are skipped.
func OnRotate(fn func(*Subscriber, Token)) Option {
	return func(o *options) error {
		if fn == nil {
			return invalidOption("OnRotate: nil func")
		}
		o.onRotate = fn
		return nil
	}
}

// OnError calls fn with the problems the subscriber meets while it keeps
// the last good token (an undecodable value in the bucket, say), on the
// callback goroutine (see OnRotate). Problems met before New returns are
// not passed on: New has overcome them, or returns the last in its error.
// If problems come faster than fn returns, fn gets the latest, and a
// problem that a good token has overcome since is not passed on. Err holds
// the last one.
func OnError(fn func(*Subscriber, error)) Option {
	return func(o *options) error {
		if fn == nil {
			return invalidOption("OnError: nil func")
		}
		o.onError = fn
		return nil
	}
}

// WithRequestTimeout bounds each refresh request to the refresher, and each
// read of the bucket; 10s by default. Refresh retries within its context
// after a timeout.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return invalidOption("WithRequestTimeout: %s is not positive", d)
		}
		o.requestTimeout = d
		return nil
	}
}
