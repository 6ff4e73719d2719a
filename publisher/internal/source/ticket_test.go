package source

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// TestATicketFirstSeenAfterAnUnansweredCallCountsFromThatCall: a getticket
// call that timed out after WeChat had issued a new ticket, and its retry,
// which sees the ticket first. WeChat counts the ticket's 7200 s from the
// first call; so must the record, whose expiry is otherwise seconds later
// than WeChat's (TestTicketsAcrossTokenRotationsNeverUseADeadToken saw
// 2.3 s under load).
func TestATicketFirstSeenAfterAnUnansweredCallCountsFromThatCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const timeout = time.Second // the retry goes at least this plus a second's backoff after the call
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp("wx1", secretText)
	fake.Late(fakewechat.PathGetTicket, 1, time.Minute) // the first answer comes after the caller gave up
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	sent := &sendTimes{path: fakewechat.PathGetTicket, next: http.DefaultTransport}
	up, err := upstream.New(srv.URL, &http.Client{Transport: sent}, timeout)
	if err != nil {
		t.Fatal(err)
	}

	b, values, lead := ticketLoop(t, ctx, up, timeout)
	lead()
	var rec kv.Credential
	select {
	case rec = <-values:
	case <-ctx.Done():
		t.Fatal("no ticket stored")
	}

	calls, issued, _ := fake.TicketCalls("wx1", "jsapi")
	times := sent.got()
	if calls != 2 || issued != 1 || len(times) != 2 {
		t.Fatalf("WeChat had %d getticket calls (%d sent) and issued %d tickets, want 2 calls, the first timed out after issuing the one ticket",
			calls, len(times), issued)
	}
	ticket, _ := fake.Ticket("wx1", "jsapi")
	wechat := fake.TicketExpiresAt("wx1", "jsapi")
	if rec.Value != ticket {
		t.Fatalf("stored %q, WeChat's ticket is %q", rec.Value, ticket)
	}
	if rec.FetchedAt.After(times[0]) {
		t.Errorf("the ticket's fetched_at is %s, after the first call went (%s): counted from the retry (%s)",
			rec.FetchedAt.Format(time.RFC3339Nano), times[0].Format(time.RFC3339Nano), times[1].Format(time.RFC3339Nano))
	}
	if rec.ExpiresAt.After(wechat) {
		t.Errorf("the record says the ticket expires at %s, after WeChat's copy (%s)",
			rec.ExpiresAt.Format(time.RFC3339Nano), wechat.Format(time.RFC3339Nano))
	}
	if e, err := b.Get(ctx, "wx1.jsapi_ticket"); err != nil {
		t.Fatal(err)
	} else if got, err := kv.DecodeCredential("wx1.jsapi_ticket", e.Value()); err != nil || !got.ExpiresAt.Equal(rec.ExpiresAt) {
		t.Errorf("the bucket holds %+v (%v), the watch saw %+v", got, err, rec)
	}
}

// ticketLoop is the loop of the app wx1's token and jsapi ticket, fetched
// through up, on an embedded JetStream server, and the ticket's records as
// the bucket delivers them; lead starts its leadership.
func ticketLoop(t *testing.T, ctx context.Context, up *upstream.Client, timeout time.Duration) (jetstream.KeyValue, <-chan kv.Credential, func()) {
	t.Helper()
	nc, js := natstest.JetStream(t)
	schedule, _ := cron.ParseStandard("@every 30s")
	c := loop.New(loop.Config{
		Conn: nc, JS: js, Bucket: bucket.Config{Name: kv.DefaultBucket, Replicas: 1, History: 1},
		Schedule: schedule, ScheduleSpec: "@every 30s",
		RefreshBefore: 10 * time.Minute, MinForceInterval: 30 * time.Second, UpstreamTimeout: timeout,
		RetryBackoff: 2 * time.Second, RetryBackoffMax: time.Minute, ConfigErrorBackoff: 10 * time.Minute,
		Pacer: upstream.NewPacer(50), Instance: "test", Version: "0.0.0",
		Now: time.Now, AfterFunc: time.AfterFunc, Logger: slog.New(slog.DiscardHandler), Metrics: noMetrics{},
		Scrubber: func() upstream.Scrubber { return nil },
	})
	c.Replace([]loop.Desc{
		{Key: "wx1", Kind: kv.KindToken, Source: NewToken("wx1", upstream.NewSecret(secretText), up)},
		{Key: "wx1.jsapi_ticket", Kind: kv.KindJSAPITicket, Parent: "wx1", Source: NewTicket(kv.KindJSAPITicket, up)},
	})
	b, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.Watch(ctx, "wx1.jsapi_ticket", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop() })
	values := make(chan kv.Credential, 8)
	go func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if rec, err := kv.DecodeCredential(e.Key(), e.Value()); err == nil {
				values <- rec
			}
		}
	}()
	lead := func() {
		ctx, stop := context.WithCancel(ctx)
		led := make(chan error, 1)
		go func() { led <- c.Lead(ctx, b, heldLease{}) }()
		t.Cleanup(func() {
			stop()
			<-led
		})
	}
	return b, values, lead
}

// sendTimes is a transport that notes when each request on path went.
type sendTimes struct {
	path string
	next http.RoundTripper

	mu    sync.Mutex
	times []time.Time
}

func (s *sendTimes) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == s.path {
		s.mu.Lock()
		s.times = append(s.times, time.Now())
		s.mu.Unlock()
	}
	return s.next.RoundTrip(r)
}

func (s *sendTimes) got() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...)
}

// heldLease is a lease held for good.
type heldLease struct{}

func (heldLease) Lost() <-chan struct{}                      { return nil }
func (heldLease) Covers(context.Context, time.Duration) bool { return true }

// noMetrics counts nothing.
type noMetrics struct{}

func (noMetrics) UpstreamCall(string, string, string, time.Duration) {}
func (noMetrics) Rotation(string, string)                            {}
func (noMetrics) Request(string)                                     {}
func (noMetrics) Repaired()                                          {}
func (noMetrics) Forget(string, string, string)                      {}
func (noMetrics) InvalidatedElsewhere(string)                        {}
func (noMetrics) QuotaRescue(string, string, string)                 {}
func (noMetrics) QuotaClearBudget(string, string, int)               {}
