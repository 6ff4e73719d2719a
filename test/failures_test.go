package test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// callTimes records when each token request reached the fake.
type callTimes struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *callTimes) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/token" {
			c.mu.Lock()
			c.times = append(c.times, time.Now())
			c.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (c *callTimes) gaps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < len(c.times); i++ {
		gaps = append(gaps, c.times[i].Sub(c.times[i-1]))
	}
	return gaps
}

// TestTransientFailuresBackOffAndNeverWriteBadRecords feeds the refresher
// every kind of transient failure WeChat or the network can produce. Each
// is retried after a longer pause than the last, nothing but the final good
// token reaches the bucket, and the backoff starts over after a success.
func TestTransientFailuresBackOffAndNeverWriteBadRecords(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake := fakewechat.New(fakewechat.Config{Overlap: -1})
	var calls callTimes
	url := serveHTTP(t, calls.wrap(fake))
	apps := testenv.Apps(fake, appA)
	faults := []fakewechat.Fault{
		{ErrCode: -1},    // busy
		{ErrCode: 45011}, // per-minute limit
		{Status: 502},    // HTML error page
		{Body: []byte(`{"access_token":"ACCESS_TO`)},                    // truncated JSON
		{Body: bytes.Repeat([]byte("x"), 10<<20)},                       // 10 MB body
		{Body: []byte(`{"access_token":"","expires_in":7200}`)},         // empty token
		{Body: []byte(`{"access_token":"T","expires_in":0}`)},           // zero lifetime
		{Body: []byte(`{"access_token":"T","expires_in":99999999999}`)}, // absurd lifetime
		{Delay: time.Hour}, // timeout
		{Panic: true},      // connection dropped
	}
	fake.Inject(appA, faults...)
	const base = 20 * time.Millisecond
	logs := newNotifyingBuffer()
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url, UpstreamTimeout: 200 * time.Millisecond,
		RetryBackoff: base, RetryBackoffMax: time.Second, Logger: textLogger(logs), MinForceInterval: time.Nanosecond})
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)

	e := testenv.Next(t, ctx, entries)
	rec := testenv.Record(t, e)
	if rec.Value != fake.Current(appA) {
		t.Errorf("bucket holds %.12q..., WeChat's token is %.12q...", rec.Value, fake.Current(appA))
	}
	if got := fake.Calls(appA); got != len(faults)+1 {
		t.Errorf("%d calls, want %d failures and one success", got, len(faults))
	}
	// The pause before retry n is at least half of base·2^(n-1), capped.
	for n, gap := range calls.gaps() {
		if least := min(base<<n, time.Second) / 2; gap < least {
			t.Errorf("retry %d came %s after the failure, want at least %s", n+1, gap, least)
		}
	}
	select {
	case e := <-entries:
		t.Errorf("a second value reached the bucket: revision %d", e.Revision())
	default:
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("failures=%d", len(faults))) {
		t.Errorf("the failures were not counted up to %d", len(faults))
	}

	// After the success the count starts over: the next failure is the first.
	fake.Inject(appA, fakewechat.Fault{ErrCode: -1})
	fake.Issue(appA)
	request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(e.Revision())})
	if err := logs.waitForCount(ctx, "failures=1 ", 2); err != nil {
		t.Errorf("after a success, the next failure was not counted as the first:\n%s", logs.String())
	}
}

// TestLastGoodTokenStaysWhileWeChatFails: when WeChat fails at refresh time,
// the bucket keeps the last good token, unchanged, until it expires and
// after; nothing is written until WeChat gives a new token.
//
// The good token is in the bucket before the refresher starts, and WeChat
// fails from the start. The refresher's clock, not the wall's, takes the
// token into its refresh window and past its expiry: each fetch it then
// makes is one event to wait on.
func TestLastGoodTokenStaysWhileWeChatFails(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	good := kv.NewCredential(appA, "the-last-good-token", time.Hour, time.Now())
	data, _ := kv.EncodeCredential(good)
	rev, err := b.Put(ctx, appA, data)
	if err != nil {
		t.Fatal(err)
	}
	entries := testenv.Entries(t, b, appA)
	testenv.Next(t, ctx, entries) // the good token itself
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	fake.Fail(appA, fakewechat.Fault{Status: 503})
	var clock shiftedClock
	// A token in the bucket and no lease bucket yet: the refresher leaves
	// the new lease bucket a lease TTL to a leader that may be alive.
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url, Schedule: "@every 1s",
		LeaseTTL: time.Second, UpstreamTimeout: 500 * time.Millisecond,
		RetryBackoff: 50 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond,
		Clock: publisher.Clock{Now: clock.now, AfterFunc: clock.afterFunc}})

	unchanged := func(when string) {
		t.Helper()
		now, err := b.Get(ctx, appA)
		if err != nil {
			t.Fatal(err)
		}
		if now.Revision() != rev || testenv.Record(t, now).Value != good.Value {
			t.Fatalf("%s: bucket changed to revision %d while WeChat failed", when, now.Revision())
		}
		select {
		case e := <-entries:
			t.Fatalf("%s: revision %d written while WeChat failed", when, e.Revision())
		default:
		}
	}
	for _, at := range []struct {
		when   string
		offset time.Duration // of the refresher's clock from now
	}{
		{"in the refresh window", time.Hour - 5*time.Minute},
		{"past the expiry", time.Hour + time.Minute},
	} {
		clock.offset.Store(int64(at.offset))
		// Two fetches: the second starts after the first failed, and
		// so after the refresher has decided what to do about it.
		if err := fake.WaitCalls(ctx, appA, fake.Calls(appA)+2); err != nil {
			t.Fatalf("%s: %v", at.when, err)
		}
		unchanged(at.when)
	}

	fake.Heal(appA)
	if rotated := testenv.Record(t, testenv.Next(t, ctx, entries)); rotated.Value != fake.Current(appA) {
		t.Error("the token written after WeChat recovered is not WeChat's current one")
	}
}

// TestConfigurationErrorIsNotHammered: a refused fetch (IP not whitelisted)
// is logged once, announced on the failed subject, and not tried again for
// the long backoff, not even when services ask for a refresh.
func TestConfigurationErrorIsNotHammered(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	fake.Fail(appA, fakewechat.Fault{ErrCode: 40164})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appA))
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	start := time.Now()
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url, Logger: logs.logger(), Schedule: "@every 1s"})

	ev, data := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.ErrCode != 40164 || ev.Class != "config" || !strings.Contains(ev.ErrMsg, "whitelist") {
		t.Errorf("failure event %s", data)
	}
	if wantAfter := start.Add(publisher.DefaultConfigErrorBackoff); ev.NextAttempt.Before(wantAfter.Add(-time.Second)) {
		t.Errorf("next attempt %s, want about %s later", ev.NextAttempt, publisher.DefaultConfigErrorBackoff)
	}
	// Services keep asking: they get the error, WeChat gets no call.
	for range 5 {
		reply := request(t, ctx, nc, appA, kv.RefreshRequest{})
		if reply.Error == nil || reply.Error.Code != kv.CodeUpstream || !strings.Contains(reply.Error.Message, "40164") {
			t.Fatalf("reply %+v, want an upstream error naming 40164", reply)
		}
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d calls, want 1", got)
	}
	lines := logs.linesWith("40164")
	if len(lines) != 1 || !strings.Contains(lines[0], "not on the app's whitelist") || !strings.Contains(lines[0], "level=ERROR") {
		t.Errorf("want one error line naming errcode 40164 and its meaning, got %q", lines)
	}
}

// TestQuotaWaitsForMidnightInChina runs the clock to just before midnight
// China time with a quota of one fetch a day: the second fetch is refused
// with 45009, and the third comes at midnight and not before.
func TestQuotaWaitsForMidnightInChina(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	china := time.FixedZone("UTC+8", 8*3600)
	realNow := time.Now()
	c := realNow.In(china)
	midnight := time.Date(c.Year(), c.Month(), c.Day()+1, 0, 0, 0, 0, china)
	offset := midnight.Add(-1500 * time.Millisecond).Sub(realNow)
	clock := func() time.Time { return time.Now().Add(offset) }

	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 2 * time.Second, DailyQuota: 1, Now: clock})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appA))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url, Clock: publisher.Clock{Now: clock}})
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)
	first := testenv.Record(t, testenv.Next(t, ctx, entries))

	ev, data := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.ErrCode != 45009 || ev.Class != "quota" || !ev.NextAttempt.Equal(midnight) {
		t.Fatalf("failure event %s, want quota until %s", data, midnight.UTC())
	}
	next := testenv.Record(t, testenv.Next(t, ctx, entries))
	if next.FetchedAt.Before(midnight) || next.Value == first.Value {
		t.Errorf("token after the quota fetched at %s, want at or after %s", next.FetchedAt, midnight.UTC())
	}
	if got := fake.Calls(appA); got != 3 {
		t.Errorf("%d calls, want 3: one good, one refused, one after midnight", got)
	}
}

// TestTokenFetchedButNotStoredIsStoredLater: when writing a fresh token
// fails, the refresher backs off and retries the write with the token it
// has, instead of fetching another (which would cost quota and kill the
// first). Here the bucket refuses writes for a while: its largest message
// is made smaller than a record.
func TestTokenFetchedButNotStoredIsStoredLater(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	logs := newNotifyingBuffer()
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url, Logger: textLogger(logs),
		RetryBackoff: 20 * time.Millisecond, RetryBackoffMax: 50 * time.Millisecond})
	b := testenv.Bucket(t, ctx, nc)
	entries := testenv.Entries(t, b, appA)
	first := testenv.Next(t, ctx, entries)
	awaitEndpoint(t, ctx, nc, appA)

	js, _ := jetstream.New(nc)
	stream, err := js.Stream(ctx, "KV_"+kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	setMaxMsgSize := func(size int32) {
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg := info.Config
		cfg.MaxMsgSize = size
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	setMaxMsgSize(16)
	fake.Issue(appA) // the token in the bucket dies; a service asks
	reply := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: revision(first.Revision())})
	if reply.Error == nil || !strings.Contains(reply.Error.Message, "not stored") {
		t.Fatalf("reply %+v, want an error saying the token was not stored", reply)
	}
	// Several write attempts, each refused, and no new fetch.
	if err := logs.waitForCount(ctx, "not stored", 4); err != nil {
		t.Fatalf("the write was not retried: %v\n%s", err, logs.String())
	}
	if got := fake.Calls(appA); got != 2 {
		t.Errorf("%d token fetches, want 2: the first token and the one that could not be stored", got)
	}

	setMaxMsgSize(kv.MaxRecordSize)
	stored := testenv.Record(t, testenv.Next(t, ctx, entries))
	if stored.Value != fake.Current(appA) {
		t.Error("the bucket does not hold the token WeChat issued on the second fetch")
	}
	if got := fake.Calls(appA); got != 2 {
		t.Errorf("%d token fetches after the write succeeded, want 2", got)
	}
}
