package subscriber

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// Option configures a Subscriber or a Set. New and NewSet refuse an option
// they cannot use with an error that wraps ErrInvalidOption: OnRotate and
// OnError are a Subscriber's, WithKeys, OnSetRotate and OnSetError a Set's.
type Option func(*options) error

type options struct {
	bucket         string
	subjectPrefix  string
	logger         *slog.Logger
	onRotate       func(*Subscriber, Token)
	onError        func(*Subscriber, error)
	requestTimeout time.Duration

	// A Set's.
	keys         []string // nil: every key
	onSetRotate  func(*Set, string, Token)
	onSetError   func(*Set, string, error)
	pendingLimit int // values nats.go queues before it drops them; 0: its default (a test's knob)
}

// forSubscriber refuses the options only a Set can use.
func (o *options) forSubscriber() error {
	switch {
	case o.keys != nil:
		return invalidOption("WithKeys is an option of NewSet: New follows the one key it is given")
	case o.onSetRotate != nil, o.onSetError != nil:
		return invalidOption("OnSetRotate and OnSetError are options of NewSet: New takes OnRotate and OnError")
	}
	return nil
}

// forSet refuses the options only a Subscriber can use.
func (o *options) forSet() error {
	if o.onRotate != nil || o.onError != nil {
		return invalidOption("OnRotate and OnError are options of New: NewSet takes OnSetRotate and OnSetError")
	}
	return nil
}

// setUp checks nc, applies opts over the defaults and checks them with
// fits (what a Subscriber or a Set can use): what New and NewSet share.
func setUp(nc *nats.Conn, opts []Option, fits func(*options) error) (options, jetstream.JetStream, error) {
	switch {
	case nc == nil:
		return options{}, nil, errors.New("subscriber: nil NATS connection")
	case nc.IsClosed():
		return options{}, nil, errors.New("subscriber: the NATS connection is closed")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt == nil {
			return options{}, nil, invalidOption("nil Option")
		}
		if err := opt(&o); err != nil {
			return options{}, nil, err
		}
	}
	if err := fits(&o); err != nil {
		return options{}, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return options{}, nil, fmt.Errorf("subscriber: %w", err)
	}
	return o, js, nil
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

// WithKeys makes a Set follow only the keys given (appids, or
// "<appid>.<kind>" for a ticket), instead of every key in the bucket and
// each new one. A key the bucket does not have yet is held the moment the
// refresher stores it.
func WithKeys(keys ...string) Option {
	return func(o *options) error {
		if len(keys) == 0 {
			return invalidOption("WithKeys: no keys (leave the option out to follow every key)")
		}
		for _, key := range keys {
			if err := kv.ValidateKey(key); err != nil {
				return invalidOption("WithKeys: %v", err)
			}
		}
		o.keys = append(o.keys, keys...)
		return nil
	}
}

// OnSetRotate calls fn with each new value of a key of the Set, the first
// included, once NewSet has returned: with the Set, the key and its token.
//
// Callbacks (OnSetRotate's and OnSetError's) run one at a time on the
// Set's callback goroutine, under no lock the Set needs: fn may call
// Refresh, Token, Close, or make WeChat calls through Transport. If a
// key's values arrive faster than fn returns, fn gets its newest and the
// ones between are skipped; keys wait their turn, none is skipped.
func OnSetRotate(fn func(s *Set, key string, t Token)) Option {
	return func(o *options) error {
		if fn == nil {
			return invalidOption("OnSetRotate: nil func")
		}
		o.onSetRotate = fn
		return nil
	}
}

// OnSetError calls fn with the problems the Set meets while it keeps the
// last good values (a key's value that does not decode, say), on the
// callback goroutine (see OnSetRotate): with the Set, the key the problem
// is about ("" for the Set's own, such as a bucket it cannot read), and the
// problem. A key removed for good is told here too (errors.Is(err,
// ErrRemoved)). Problems met before NewSet returns are not passed on. If a
// key's problems come faster than fn returns, fn gets the latest, and none
// that a good value of the key has overcome since.
func OnSetError(fn func(s *Set, key string, err error)) Option {
	return func(o *options) error {
		if fn == nil {
			return invalidOption("OnSetError: nil func")
		}
		o.onSetError = fn
		return nil
	}
}
