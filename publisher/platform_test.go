package publisher

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// heldLease is a lease the test holds for the whole test, with left of it
// to cover a call.
type heldLease struct{ left time.Duration }

func (heldLease) Lost() <-chan struct{} { return nil }

func (l heldLease) Covers(_ context.Context, d time.Duration) bool { return l.left >= d }

// platformWithoutTicket leads the refresher of the platform of these tests
// (secret secret) on a lease with left of it, on a fake WeChat that pushed
// the platform no verify ticket yet; the fake, the failure events of the
// platform and the refresher's metrics are returned.
func platformWithoutTicket(t *testing.T, ctx context.Context, secret string, left time.Duration) (*fakewechat.Server, *nats.Subscription, *prometheus.Registry) {
	t.Helper()
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(component, secret, "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	nc, _ := natstest.JetStream(t)
	reg := prometheus.NewRegistry()
	app := App{AppID: component, Secret: NewSecret(secret), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{app}, UpstreamURL: srv.URL, UpstreamRate: MinUpstreamRate, UpstreamTimeout: time.Second,
		Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.platforms.Open(ctx); err != nil {
		t.Fatal(err)
	}
	tokens, err := r.creds.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	failures, err := nc.SubscribeSync(kv.Subjects{}.Failed(component))
	if err != nil {
		t.Fatal(err)
	}
	termCtx, endTerm := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- r.lead(termCtx, tokens, heldLease{left}) }()
	t.Cleanup(func() {
		endTerm()
		<-led
	})
	return fake, failures, reg
}

// TestNoVerifyTicketMakesNoCall: a platform WeChat has pushed no verify
// ticket yet makes no call for its component token, whether or not the
// lease covers one: it fails at once, as a ticket failure, and asks WeChat
// to push a ticket, the one call counted.
func TestNoVerifyTicketMakesNoCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		left time.Duration // of the lease
	}{
		{"the lease covers a call", time.Hour},
		{"the lease is too short for a call", time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fake, failed, reg := platformWithoutTicket(t, ctx, "s", tc.left)

			msg, err := failed.NextMsgWithContext(ctx)
			if err != nil {
				t.Fatalf("no failure event: %v", err)
			}
			var ev kv.FailureEvent
			if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Class != "ticket" {
				t.Errorf("failure event %s, want class ticket", msg.Data)
			}
			if n := fake.StartPushCalls(component); n != 1 {
				t.Errorf("WeChat was asked %d times to push a ticket, want once", n)
			}
			calls := map[string]float64{}
			families, _ := reg.Gather()
			for _, f := range families {
				if f.GetName() != "wxtoken_upstream_requests_total" {
					continue
				}
				for _, m := range f.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "api" {
							calls[l.GetValue()] += m.GetCounter().GetValue()
						}
					}
				}
			}
			if calls["component_token"] != 0 || calls["start_push_ticket"] != 1 {
				t.Errorf("calls counted by API: %v, want the push restart alone", calls)
			}
		})
	}
}

// TestStartPushBodyIsJSON: the request asking WeChat to push a verify
// ticket again is JSON, whatever the secret holds (control characters
// included), and WeChat takes it.
func TestStartPushBodyIsJSON(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fake, failed, _ := platformWithoutTicket(t, ctx, "component\x7fsecret\x01", time.Hour)
	if _, err := failed.NextMsgWithContext(ctx); err != nil {
		t.Fatalf("no failure event: %v", err)
	}
	if n := fake.StartPushCalls(component); n != 1 {
		t.Errorf("WeChat took %d requests to push the ticket again, want 1", n)
	}
}
