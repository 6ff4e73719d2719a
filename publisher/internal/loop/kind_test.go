package loop

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// testKind is a kind of credential the loop has never heard of, defined
// here alone: its own fetch (the fake WeChat's /cgi-bin/token, called
// here), its own window (the last half of RefreshBefore), a step before
// each fetch (a gate that may refuse, with a failure of its own class), a
// step before each write (counted) and one after (a retired key goes for
// good), and a failure hook (its refusals pause for a time of its own).
// The loop runs it as it runs WeChat's kinds: package source is nowhere
// here.
type testKind struct {
	t      *testing.T
	appid  string
	secret string
	client *upstream.Client

	closed  atomic.Bool  // the gate refuses every fetch
	retired atomic.Bool  // the key goes for good once a value is stored
	unsaved atomic.Bool  // the step before a write cannot store what it holds
	urgent  atomic.Bool  // a fetch is due at once; the next fetch does what was urgent
	saves   atomic.Int64 // the step before a write ran
	hooked  atomic.Int64 // the failure hook was told of a refusal of its own
	mu      sync.Mutex
	grants  []string // what each fetch was made with, as BeforeFetch chose
}

// gateClass is the class of the test kind's own refusals.
const gateClass upstream.Class = "gate"

// gatePause is how long the test kind's refusals pause its fetches.
const gatePause = 42 * time.Minute

func newTestKind(t *testing.T, wechatURL, appid, secret string) *testKind {
	client, err := upstream.New(wechatURL, nil, time.Hour) // the term's contexts bound it
	if err != nil {
		t.Fatal(err)
	}
	return &testKind{t: t, appid: appid, secret: secret, client: client}
}

func (*testKind) API() string { return "test_kind" }

func (k *testKind) Fetch(ctx context.Context, a *Attempt) (upstream.Issued, error) {
	if a.Grant != "through the gate" {
		k.t.Errorf("a fetch made with %v, not what BeforeFetch chose", a.Grant)
	}
	k.urgent.Store(false)
	q := url.Values{"grant_type": {"client_credential"}, "appid": {k.appid}, "secret": {k.secret}}
	status, body, err := k.client.Get(ctx, "cgi-bin/token", q, k.secret)
	if err != nil {
		return upstream.Issued{}, err
	}
	return upstream.DecodeToken(status, body, upstream.TokenCodes)
}

func (*testKind) Window(refreshBefore time.Duration) time.Duration { return refreshBefore / 2 }

func (*testKind) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return now.Add(window), false
}

func (k *testKind) Check(ctx context.Context, token string) (bool, error) {
	return k.client.CheckToken(ctx, token)
}

func (k *testKind) BeforeFetch(_ context.Context, a *Attempt) error {
	if k.closed.Load() {
		return &upstream.Error{Class: gateClass, ErrMsg: "the gate is closed", Means: "the test kind's gate refused the fetch"}
	}
	a.Grant = "through the gate"
	k.mu.Lock()
	k.grants = append(k.grants, a.Grant.(string))
	k.mu.Unlock()
	return nil
}

func (k *testKind) Urgent(time.Time) bool { return k.urgent.Load() }

func (k *testKind) Save(context.Context) error {
	k.saves.Add(1)
	if k.unsaved.Load() {
		return errors.New("what the test kind holds cannot be stored")
	}
	return nil
}

func (k *testKind) Removal() (Removal, bool) {
	return Removal{Reason: "retired"}, k.retired.Load()
}

func (k *testKind) Failed(_ *Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	if upstream.ClassOf(err) != gateClass {
		return 0, false
	}
	k.hooked.Add(1)
	return gatePause, true
}

var (
	_ Source      = (*testKind)(nil)
	_ Checker     = (*testKind)(nil)
	_ Preparer    = (*testKind)(nil)
	_ Urgent      = (*testKind)(nil)
	_ Saver       = (*testKind)(nil)
	_ Remover     = (*testKind)(nil)
	_ FailureHook = (*testKind)(nil)
)

// TestANewKindNeedsNoChangeToTheLoop runs the test kind through real
// rotations (a first value, scheduled by its own window), a fetch its
// urgent work makes due at once, a forced
// refresh WeChat confirms with getcallbackip, a failure of its own
// (refused before any call, paused by its hook), and a removal its
// post-store step asks for.
func TestANewKindNeedsNoChangeToTheLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newTestLeader(t, ctx, fakewechat.Config{Overlap: -1}, func(cfg *Config) { cfg.MinForceInterval = time.Millisecond })
	kind := l.c.credential("wx1").id().src.(*testKind)
	values := watchKey(t, ctx, l.bucket, "wx1")
	failed, err := l.nc.SubscribeSync(kv.Subjects{}.Failed("wx1"))
	if err != nil {
		t.Fatal(err)
	}
	removed, err := l.nc.SubscribeSync(kv.Subjects{}.Removed("wx1"))
	if err != nil {
		t.Fatal(err)
	}
	l.lead(t, ctx, l.bucket)

	// A first value: fetched through the gate, stored after the step
	// before a write, due again by the kind's window.
	first := nextValue(t, ctx, values)
	l.refresh(t, ctx, nil) // answered once the rotation landed
	if first.rec.Value != l.fake.Current("wx1") || first.rec.Reason != kv.ReasonInitial {
		t.Fatalf("the first value %+v is not WeChat's, fetched as the initial one", first.rec)
	}
	if kind.saves.Load() < 2 {
		t.Errorf("the step before a write ran %d times, want before the rotation and before the write", kind.saves.Load())
	}
	refreshAt := stateOf(l.c.credential("wx1")).refreshAt
	if lead := first.rec.ExpiresAt.Sub(refreshAt); lead <= 0 || lead > 5*time.Minute+time.Minute {
		t.Errorf("due %s before expiry, want within the kind's window of 5m and its spread", lead)
	}

	// Work of the kind's own that cannot wait (a code to exchange, which
	// the platform announces as an authorizer's newer record): a fetch
	// at once, though the value held is fresh.
	kind.urgent.Store(true)
	l.fake.Issue("wx1")
	l.c.Renew("wx1")
	urgent := nextValue(t, ctx, values)
	if urgent.rec == nil || urgent.rec.Value != l.fake.Current("wx1") || kind.urgent.Load() {
		t.Fatalf("after urgent work the key holds %+v, want WeChat's next value, fetched at once", urgent.rec)
	}

	// A forced refresh of a value WeChat says is dead.
	l.fake.Issue("wx1")
	reply := l.refresh(t, ctx, &urgent.rev)
	second := nextValue(t, ctx, values)
	if !reply.Refreshed || reply.Revision != second.rev || second.rec.Value != l.fake.Current("wx1") || second.rec.Reason != kv.ReasonRequested {
		t.Fatalf("a forced refresh: %+v, stored %+v; want WeChat's new value", reply, second.rec)
	}
	if l.fake.Checks("wx1") == 0 {
		t.Error("the forced refresh did not ask WeChat first")
	}

	// A failure of the kind's own: refused before any call, paused by its
	// hook, announced with its class.
	calls := l.fake.Calls("wx1")
	kind.closed.Store(true)
	l.fake.Issue("wx1")
	reply = l.refresh(t, ctx, &second.rev)
	if reply.Error == nil || reply.Error.Code != kv.CodeUpstream || !strings.Contains(reply.Error.Message, "the gate is closed") {
		t.Errorf("a fetch the gate refused is answered %+v, want an upstream error saying why", reply)
	}
	var ev kv.FailureEvent
	if msg, err := failed.NextMsgWithContext(ctx); err != nil || json.Unmarshal(msg.Data, &ev) != nil || ev.Class != string(gateClass) {
		t.Errorf("failure event %+v, %v; want the kind's class", ev, err)
	}
	if next := stateOf(l.c.credential("wx1")).retryAt; kind.hooked.Load() != 1 || time.Until(next) < gatePause-time.Minute {
		t.Errorf("the hook was told %d times, the next fetch at %s; want once, and the kind's pause", kind.hooked.Load(), next)
	}
	if n := l.fake.Calls("wx1"); n != calls {
		t.Errorf("%d calls to WeChat for a fetch the gate refused", n-calls)
	}

	// The gate opens: the pause of its refusal is lifted, as a push lifts
	// a platform's. A removal the post-store step asks for: stored, never
	// announced, then removed with the kind's reason.
	kind.closed.Store(false)
	if !l.c.Retry("wx1", func(err error) bool { return upstream.ClassOf(err) == gateClass }) {
		t.Fatal("the gate's refusal was not what the credential waited after")
	}
	kind.retired.Store(true)
	announced, err := l.nc.SubscribeSync(kv.Subjects{}.Rotated("wx1"))
	if err != nil {
		t.Fatal(err)
	}
	l.refresh(t, ctx, &second.rev)
	if third := nextValue(t, ctx, values); third.rec == nil || third.rev <= second.rev {
		t.Fatalf("the retired key's last value was not stored: %+v", third)
	}
	// The key goes once it is no credential (as an authorizer's goes when
	// the platform's credentials are made again without it).
	if ch := l.c.Replace(nil); len(ch.Removed) != 1 {
		t.Fatalf("the set without the key removed %v", ch.Removed)
	}
	msg, err := removed.NextMsgWithContext(ctx)
	var rm kv.RemovalEvent
	if err != nil || json.Unmarshal(msg.Data, &rm) != nil || rm.Reason != "retired" {
		t.Fatalf("removal event %+v, %v; want the kind's reason", rm, err)
	}
	if gone := nextValue(t, ctx, values); gone.rec != nil || gone.rev != rm.Revision {
		t.Errorf("after the removal the key holds %+v, want the delete marker at %d", gone, rm.Revision)
	}
	if msg, err := announced.NextMsg(0); err == nil {
		t.Errorf("the retired key's last value was announced: %s", msg.Data)
	}
}

// stored is a value of a key as the bucket delivered it; rec is nil for a
// delete marker.
type stored struct {
	rev uint64
	rec *kv.Credential
}

// watchKey follows key of b from now on.
func watchKey(t *testing.T, ctx context.Context, b jetstream.KeyValue, key string) <-chan stored {
	t.Helper()
	w, err := b.Watch(ctx, key, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop() })
	out := make(chan stored, 64)
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			s := stored{rev: e.Revision()}
			if e.Operation() == jetstream.KeyValuePut {
				if rec, err := kv.DecodeCredential(key, e.Value()); err == nil {
					s.rec = &rec
				}
			}
			out <- s
		}
	}()
	return out
}

func nextValue(t *testing.T, ctx context.Context, values <-chan stored) stored {
	t.Helper()
	select {
	case s := <-values:
		return s
	case <-ctx.Done():
		t.Fatal("no value stored")
		return stored{}
	}
}

// stateOf is a snapshot of cr's state.
func stateOf(cr *credential) state {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.st
}
