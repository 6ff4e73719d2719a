package loop

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Source is how a kind of credential is fetched: the one thing the loop
// asks of every kind. Whatever else differs by kind is an optional
// interface below, asserted once, when the credential is made
// (newIdentity).
type Source interface {
	// API names the fetch in metrics ("token", "stable_token",
	// "jsapi_ticket", ...) and logs.
	API() string
	// Fetch asks WeChat for the credential, in the API's normal mode,
	// with what a holds: its parent's token, and what the source's
	// BeforeFetch chose.
	Fetch(ctx context.Context, a *Attempt) (upstream.Issued, error)
	// Window is how long before its expiry a value is replaced, given the
	// configured RefreshBefore: the API may only issue a new value inside
	// some last stretch of the old one's life.
	Window(refreshBefore time.Duration) time.Duration
	// Repeated decides what follows an answer that repeats the value held:
	// when to ask again, unless the value is to be written (with the
	// expiry the answer gave) after all.
	Repeated(held kv.Credential, window time.Duration, now time.Time) (askAgain time.Time, write bool)
}

// Checker is a source whose values WeChat can be asked about
// (getcallbackip takes tokens): a forced refresh asks first whether the
// value held still works.
type Checker interface {
	Check(ctx context.Context, value string) (valid bool, err error)
}

// Preparer is a source with a step before each fetch, before its parent's
// token is asked for: it chooses what the fetch is made with (a.Grant),
// or refuses the attempt, as its failure, before any call to WeChat.
type Preparer interface {
	BeforeFetch(ctx context.Context, a *Attempt) error
}

// Urgent is a source that may need a fetch at once, however fresh the
// value held (an authorization code to exchange before it expires, a
// refresh token to store). Urgent is asked under the credential's lock:
// it must not call back into the loop.
type Urgent interface {
	Urgent(now time.Time) bool
}

// Budgeter is a source whose calls count against a budget of its own
// (WeCom's hourly limits): Spend runs once the call is sure to go, and an
// error from it stops the call, as the credential's failure.
type Budgeter interface {
	Spend(a *Attempt) error
}

// Forcer is a source with a forced mode, for a value WeChat says is dead
// and its normal mode returns again (stable_token). Force makes that
// call, through a.Call, or declines it (*Declined). verified says whether
// WeChat said the value is dead.
type Forcer interface {
	Force(ctx context.Context, a *Attempt, held kv.Credential, verified bool) (upstream.Issued, error)
}

// Ender is a source whose value held another holder of the app's secret
// can end early (/cgi-bin/token: a fetch by anyone ends the token before it
// five minutes later; stable_token: a forced refresh by anyone ends it at
// once). Ends says whether the refresher's own call under api (the name
// the call is counted under) ends it: the ledger records when the last
// such call went, so that a token WeChat says is dead can be told to be
// the refresher's own doing or another party's.
type Ender interface {
	Ends(api string) bool
}

// Recorder is a source that makes the record of what it fetched itself:
// the API that issued it, or an expiry counted from when another
// credential first held the value. Without it the record is
// kv.NewCredential's.
type Recorder interface {
	Record(a *Attempt, issued upstream.Issued) kv.Credential
}

// Saver is a source that holds what must be stored before the value it
// fetched is (an authorizer's refresh token): Save stores it, and is
// asked before each rotation, before each value is written, and between
// terms.
type Saver interface {
	Save(ctx context.Context) error
}

// Remover is a source whose key may have to go for good once a value was
// stored (an authorizer that withdrew while its token was fetched):
// Removal says why, with ok. A key that goes is not announced, and is
// removed (see Credentials.Remove).
type Remover interface {
	Removal() (r Removal, ok bool)
}

// FailureHook is a source that decides, for some of its failures, when the
// next fetch may go, and may act on them (ask WeChat to push a ticket):
// ok false leaves the wait to the loop's rule for err's class. a is nil
// for a failure that was no fetch (a write, a read of the bucket).
type FailureHook interface {
	Failed(a *Attempt, err error, failures int, now time.Time) (wait time.Duration, ok bool)
}

// Declined is a call a source would not make: nothing failed, and nothing
// pauses. A refresh request that asked for it is answered rate_limited
// when Wait says how long until it may be asked again (a budget spent),
// upstream otherwise.
type Declined struct {
	Reason string
	Wait   time.Duration
}

func (e *Declined) Error() string { return "publisher: " + e.Reason }

// Attempt is one fetch of a credential, as the loop hands it to its
// source: what the fetch is made with, and the loop's machinery for the
// source's own steps.
type Attempt struct {
	Key   string // the credential's key
	Token string // the parent's token the fetch is made with; "" without a parent
	// Grant is what the source's BeforeFetch chose for this fetch (a
	// verify ticket, a refresh token): opaque to the loop, read back by
	// the source's Fetch and hooks.
	Grant any

	c       *Credentials
	t       *term
	cr      *credential
	gen     uint64        // the credential's grant generation when the attempt began
	latency time.Duration // of the last call that issued a value
	// unanswered are the calls of the credential without an answer before
	// the last call that issued a value (see IssuedFrom).
	unanswered []time.Time
}

// Now is the time on the refresher's clock.
func (a *Attempt) Now() time.Time { return a.c.now() }

// Log is the refresher's logger.
func (a *Attempt) Log() *slog.Logger { return a.c.log }

// Context bounds the attempt's I/O: it ends when the term's work must
// stop.
func (a *Attempt) Context() context.Context { return a.t.work }

// Bucket is the token bucket, for a source that keeps state of its own in
// it (stable's force budget).
func (a *Attempt) Bucket() jetstream.KeyValue { return a.t.bucket }

// Call makes one more call to WeChat for the credential, as the fetch's
// own: through the pacer and the lease's fence, counted in the metrics
// under api. budget, if not nil, runs once the call is sure to go; an
// error from it stops the call. Call records no failure: what it returns
// is the caller's to return.
func (a *Attempt) Call(api string, budget func() error, call func(context.Context) (upstream.Issued, error)) (upstream.Issued, error) {
	issued, err := a.c.callUpstream(a, api, budget, call)
	return issued, err
}

// Do makes a call to WeChat that fetches no value (a push restart):
// through the pacer, counted in the metrics under api with its class. It
// returns ErrEnding, and makes no call, when the term ends first.
func (a *Attempt) Do(api string, call func(context.Context) error) error {
	if err := a.c.pacer.Wait(a.t.ctx); err != nil {
		return ErrEnding
	}
	if err := a.c.count(a.t, a.cr, api, a.c.now()); err != nil {
		return err
	}
	if a.t.ctx.Err() != nil { // the term ended during the count's round trip
		return ErrEnding
	}
	clock := time.Now()
	err := call(a.t.work)
	result := "ok"
	if err != nil {
		result = string(upstream.ClassOf(err))
	}
	a.c.metrics.UpstreamCall(a.Key, api, result, time.Since(clock))
	return err
}

// Announce publishes a failure event of the credential that pauses
// nothing (a day's forced refreshes spent).
func (a *Attempt) Announce(errcode int, errmsg string, class upstream.Class, next time.Time) {
	a.c.publishFailure(a.Key, errcode, errmsg, class, next)
}

// Peers returns the records the loop holds of the other credentials of
// this one's kind (a WeCom corp's apps share one jsapi ticket).
func (a *Attempt) Peers() []kv.Credential {
	return a.c.peers(a.cr)
}

// ErrEnding answers what the ending of a leadership term cut short.
var ErrEnding = errors.New("publisher: refresher is stopping or lost its leadership")
