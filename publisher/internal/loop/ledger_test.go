package loop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// enderKind is the test kind with values that the refresher's own fetch
// ends, as /cgi-bin/token's; its check can be made to fail.
type enderKind struct {
	*testKind
	checkFails atomic.Bool
}

func (k *enderKind) Ends(api string) bool { return api == k.API() }

func (k *enderKind) Check(ctx context.Context, token string) (bool, error) {
	if k.checkFails.Load() {
		return false, errors.New("WeChat did not answer the check")
	}
	return k.testKind.Check(ctx, token)
}

// counted counts tokens invalidated elsewhere, and nothing else.
type counted struct {
	discard
	elsewhere atomic.Int64
}

func (m *counted) InvalidatedElsewhere(key string) {
	if key == "wx1" {
		m.elsewhere.Add(1)
	}
}

// syncBuffer is a log anyone may write to and read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// elsewhereRig is the app wx1 of an ender kind against a fake WeChat whose
// clock the test moves (offset), with WeChat's 5-minute overlap, on an
// embedded JetStream server; replicas of its loop lead in turn.
type elsewhereRig struct {
	t      *testing.T
	nc     *nats.Conn
	js     jetstream.JetStream
	fake   *fakewechat.Server
	url    string
	offset atomic.Int64 // the fake's clock is ahead of time.Now by this
	logs   syncBuffer
	m      counted
	failed *nats.Subscription
}

func newElsewhereRig(t *testing.T) *elsewhereRig {
	r := &elsewhereRig{t: t}
	r.nc, r.js = natstest.JetStream(t)
	r.fake = fakewechat.New(fakewechat.Config{Now: func() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) }})
	r.fake.AddApp("wx1", "a-secret-of-some-length")
	srv := httptest.NewServer(r.fake)
	t.Cleanup(srv.Close)
	r.url = srv.URL
	sub, err := r.nc.SubscribeSync(kv.Subjects{}.Failed("wx1"))
	if err != nil {
		t.Fatal(err)
	}
	r.failed = sub
	return r
}

// replica is one replica's loop of wx1, leading from the time it is made
// until stop.
type replica struct {
	c    *Credentials
	kind *enderKind
	b    jetstream.KeyValue
	stop func()
}

func (r *elsewhereRig) open(ctx context.Context, instance string) *replica {
	r.t.Helper()
	c := New(testConfig(r.nc, r.js, func(cfg *Config) {
		cfg.Instance = instance
		cfg.Logger = slog.New(slog.NewTextHandler(&r.logs, nil))
		cfg.Metrics = &r.m
		cfg.MinForceInterval = time.Nanosecond // the tests report one token after another
	}))
	kind := &enderKind{testKind: newTestKind(r.t, r.url, "wx1", "a-secret-of-some-length")}
	c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: kind}})
	b, err := c.Open(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	return &replica{c: c, kind: kind, b: b, stop: func() {}}
}

// lead makes rep lead until its stop, or the test's end.
func (rep *replica) lead(t *testing.T, ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- rep.c.Lead(ctx, rep.b, &fakeLease{lostCh: make(chan struct{}), left: time.Hour}) }()
	var once sync.Once
	rep.stop = func() {
		once.Do(func() {
			cancel()
			<-led
		})
	}
	t.Cleanup(rep.stop)
}

// report is a service's refresh request naming rev as rejected.
func (r *elsewhereRig) report(ctx context.Context, rev uint64) kv.RefreshReply {
	r.t.Helper()
	l := &testLeader{nc: r.nc}
	return l.refresh(r.t, ctx, &rev)
}

// events returns the failure events published so far, after a round trip
// to the server has delivered any under way.
func (r *elsewhereRig) events() []kv.FailureEvent {
	r.t.Helper()
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
	var out []kv.FailureEvent
	for {
		msg, err := r.failed.NextMsg(0)
		if err != nil {
			return out
		}
		var ev kv.FailureEvent
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func (r *elsewhereRig) ledger(ctx context.Context, b jetstream.KeyValue) kv.Ledger {
	r.t.Helper()
	e, err := b.Get(ctx, kv.LedgerKey("wx1"))
	if err != nil {
		r.t.Fatal(err)
	}
	l, err := kv.DecodeLedger("wx1", e.Value())
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// TestTokenEndedByAnotherPartyIsSaidLoudly: another client fetches a token
// with the app's secret; within WeChat's 5-minute overlap a report changes
// nothing, after it the check finds the token dead, and the ledger shows
// no fetch of the refresher's since: one failure event of class
// invalidated_elsewhere naming the revision, an ERROR line that says what
// to do, the counter at 1, the ledger's record; and the rotation goes on.
func TestTokenEndedByAnotherPartyIsSaidLoudly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	rep := r.open(ctx, "a")
	values := watchKey(t, ctx, rep.b, "wx1")
	rep.lead(t, ctx)
	first := nextValue(t, ctx, values)

	r.fake.Issue("wx1") // another party, same secret
	if reply := r.report(ctx, first.rev); reply.Refreshed || reply.Revision != first.rev {
		t.Fatalf("within the overlap the token works, yet the report was answered %+v", reply)
	}
	r.offset.Store(int64(5*time.Minute + time.Second))
	reply := r.report(ctx, first.rev)
	if !reply.Refreshed || reply.Revision <= first.rev {
		t.Fatalf("the dead token was not rotated: %+v", reply)
	}

	evs := r.events()
	if len(evs) != 1 || evs[0].Class != kv.ClassInvalidatedElsewhere {
		t.Fatalf("want one invalidated_elsewhere event, got %+v\n%s", evs, r.logs.String())
	}
	ev := evs[0]
	left := time.Until(first.rec.ExpiresAt)
	if ev.Revision != first.rev || !ev.ExpiresAt.Equal(first.rec.ExpiresAt) || ev.At.IsZero() ||
		ev.BeforeExpirySeconds <= 0 || time.Duration(ev.BeforeExpirySeconds)*time.Second > left+time.Second {
		t.Errorf("the event does not say which token died when: %+v (expiry in %s)", ev, left)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "level=ERROR msg=\"token ended by another party holding the AppSecret") ||
		!strings.Contains(logs, "调用日志查询") || !strings.Contains(logs, "revision="+strconv.FormatUint(first.rev, 10)) {
		t.Errorf("no ERROR line saying what happened and where to look:\n%s", logs)
	}
	if strings.Contains(logs, "a-secret-of-some-length") || strings.Contains(logs, first.rec.Value) {
		t.Error("the log holds the secret or the token")
	}
	if n := r.m.elsewhere.Load(); n != 1 {
		t.Errorf("counter at %d, want 1", n)
	}
	l := r.ledger(ctx, rep.b)
	if l.Elsewhere == nil || l.Elsewhere.Revision != first.rev || l.Elsewhere.Count != 1 {
		t.Errorf("the ledger does not record the token ended elsewhere: %+v", l.Elsewhere)
	}
	if l.Calls["test_kind"] != 2 || l.MonthCalls["test_kind"] != 2 || l.LastEnding.IsZero() {
		t.Errorf("the ledger counts %v this day, %v this month, last ending %s; want the 2 fetches",
			l.Calls, l.MonthCalls, l.LastEnding)
	}
}

// TestTokensTheRefresherEndedAreNotBlamedOnOthers: the refresher's own
// rotation ends a token (WeChat without overlap), which an operator then
// restores to the bucket; the leader that stored it steps down and
// another replica takes over; a service reports the restored token
// rejected. WeChat says it is dead, but the ledger, written by the first
// replica, shows a fetch after it: nothing is said, and the token rotates.
func TestTokensTheRefresherEndedAreNotBlamedOnOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	a := r.open(ctx, "a")
	b := a.b
	values := watchKey(t, ctx, b, "wx1")
	a.lead(t, ctx)
	first := nextValue(t, ctx, values)

	// The refresher's own rotation, through a check that fails: it
	// rotates unverified, so nothing is judged on the way.
	a.kind.checkFails.Store(true)
	if reply := r.report(ctx, first.rev); !reply.Refreshed {
		t.Fatalf("no rotation: %+v", reply)
	}
	nextValue(t, ctx, values)
	r.offset.Store(int64(5*time.Minute + time.Second)) // the overlap is over: the first token is dead
	if ok, _ := r.fake.Valid(first.rec.Value); ok {
		t.Fatal("the replaced token still works after the overlap")
	}
	data, err := kv.EncodeCredential(*first.rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "wx1", data); err != nil { // a restore
		t.Fatal(err)
	}
	restored := nextValue(t, ctx, values)
	a.stop()

	// The next leader holds the restored token before it leads, as a
	// standby's follower of the bucket has read it before it campaigns.
	// Without it the report could reach b's endpoint before b knew of any
	// token (bad_request: a revision newer than 0), or b's first rotation,
	// of no token held, judge nothing.
	e, err := b.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	next := r.open(ctx, "b")
	next.c.Observe(e)
	next.lead(t, ctx)
	reply := r.report(ctx, restored.rev)
	if !reply.Refreshed {
		t.Fatalf("the dead restored token was not rotated: %+v", reply)
	}
	if evs := r.events(); len(evs) != 0 {
		t.Errorf("events for a token the refresher ended: %+v", evs)
	}
	if n := r.m.elsewhere.Load(); n != 0 || strings.Contains(r.logs.String(), "another party") {
		t.Errorf("a token the refresher ended was blamed on another party (counter %d):\n%s", n, r.logs.String())
	}
}

// TestAnotherPartyIsSeenAcrossAFailover: the replica that fetched the
// token steps down; the next leader, which fetched nothing, judges by the
// ledger in the bucket.
func TestAnotherPartyIsSeenAcrossAFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	a := r.open(ctx, "a")
	values := watchKey(t, ctx, a.b, "wx1")
	a.lead(t, ctx)
	first := nextValue(t, ctx, values)
	a.stop()

	r.open(ctx, "b").lead(t, ctx)
	if reply := r.report(ctx, first.rev); reply.Refreshed {
		t.Fatalf("a working token was rotated after the failover: %+v", reply)
	}
	if evs := r.events(); len(evs) != 0 {
		t.Fatalf("events after a failover alone: %+v", evs)
	}
	r.fake.Issue("wx1")
	r.offset.Store(int64(5*time.Minute + time.Second))
	if reply := r.report(ctx, first.rev); !reply.Refreshed {
		t.Fatalf("the dead token was not rotated: %+v", reply)
	}
	if evs := r.events(); len(evs) != 1 || evs[0].Class != kv.ClassInvalidatedElsewhere || evs[0].Revision != first.rev {
		t.Errorf("want one invalidated_elsewhere event for revision %d, got %+v", first.rev, evs)
	}
}

// TestAWholeBucketRestoreUnderALeaderBlamesNobody: an operator restores
// the token and the app's ledger as a snapshot had them, before the
// refresher's own rotation ended that token; the leader ran through the
// restore. The restored ledger knows nothing of the rotation, but the
// replica does: the ledger gets back what it lost at the next write, the
// report of the dead restored token blames nobody, and the month's counts
// (the reset budgets) are not rolled back.
func TestAWholeBucketRestoreUnderALeaderBlamesNobody(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newElsewhereRig(t)
	a := r.open(ctx, "a")
	b := a.b
	values := watchKey(t, ctx, b, "wx1")
	a.lead(t, ctx)
	first := nextValue(t, ctx, values)
	snapToken, err := b.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	snapLedger, err := b.Get(ctx, kv.LedgerKey("wx1"))
	if err != nil {
		t.Fatal(err)
	}

	a.kind.checkFails.Store(true) // the refresher's own rotation, unjudged
	if reply := r.report(ctx, first.rev); !reply.Refreshed {
		t.Fatalf("no rotation: %+v", reply)
	}
	nextValue(t, ctx, values)
	a.kind.checkFails.Store(false)
	r.offset.Store(int64(5*time.Minute + time.Second)) // the overlap is over: the first token is dead
	before := r.ledger(ctx, b)

	// The snapshot as it was before the rotation: in this test the two
	// fetches share a second, which the ledger tells apart by the count
	// of ending calls in it; the snapshot had one.
	snap, err := kv.DecodeLedger("wx1", snapLedger.Value())
	if err != nil {
		t.Fatal(err)
	}
	snap.LastEnding, snap.LastEndingCalls = first.rec.FetchedAt, 1
	data, err := kv.EncodeLedger(snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, kv.LedgerKey("wx1"), data); err != nil { // the restore
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "wx1", snapToken.Value()); err != nil {
		t.Fatal(err)
	}
	restored := nextValue(t, ctx, values)
	e, err := b.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	a.c.Observe(e) // as the refresher's follower of the bucket does
	if reply := r.report(ctx, restored.rev); !reply.Refreshed {
		t.Fatalf("the dead restored token was not rotated: %+v", reply)
	}
	if evs := r.events(); len(evs) != 0 {
		t.Errorf("events for a token the refresher ended: %+v", evs)
	}
	if n := r.m.elsewhere.Load(); n != 0 {
		t.Errorf("a token the refresher ended was blamed on another party after a restore (counter %d)", n)
	}
	after := r.ledger(ctx, b)
	total := func(l kv.Ledger) (n int) {
		for _, c := range l.MonthCalls {
			n += c
		}
		return n
	}
	if total(after) <= total(before) || after.LastEnding.Before(before.LastEnding) {
		t.Errorf("the restore rolled the ledger back: %d calls this month before the restore, %d after a fetch; last ending %s, then %s",
			total(before), total(after), before.LastEnding, after.LastEnding)
	}
}
