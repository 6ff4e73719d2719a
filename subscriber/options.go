package subscriber

import (
	"log/slog"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Option configures a Subscriber.
type Option func(*options)

type options struct {
	bucket         string
	subjectPrefix  string
	logger         *slog.Logger
	onRotate       func(Token)
	onError        func(error)
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
func WithBucket(name string) Option { return func(o *options) { o.bucket = name } }

// WithSubjectPrefix sets the subject prefix; kv.DefaultSubjectPrefix by default.
func WithSubjectPrefix(prefix string) Option { return func(o *options) { o.subjectPrefix = prefix } }

// WithLogger makes the subscriber log to l. It is silent by default.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// OnRotate calls fn with each new token, the first included. fn runs on a
// goroutine of its own, one call at a time, outside any lock, so it may call
// Refresh or make WeChat calls through Transport. If tokens arrive faster
// than fn returns, fn gets the newest and the ones between are skipped.
func OnRotate(fn func(Token)) Option { return func(o *options) { o.onRotate = fn } }

// OnError calls fn with every problem the subscriber meets while it keeps
// the last good token (an undecodable value in the bucket, say).
func OnError(fn func(error)) Option { return func(o *options) { o.onError = fn } }

// WithRequestTimeout bounds each refresh request to the refresher; 10s by
// default. Refresh retries within its context after a timeout.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.requestTimeout = d } }
