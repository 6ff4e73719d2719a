package loop

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// testConfig is the loop's configuration with the refresher's defaults,
// changed by change if it is not nil, on nc.
func testConfig(nc *nats.Conn, js jetstream.JetStream, change func(*Config)) Config {
	schedule, _ := cron.ParseStandard("@every 30s")
	cfg := Config{
		Conn: nc, JS: js, Bucket: bucket.Config{Name: kv.DefaultBucket, Replicas: 1, History: 1},
		Schedule: schedule, ScheduleSpec: "@every 30s",
		RefreshBefore: 10 * time.Minute, MinForceInterval: 30 * time.Second, UpstreamTimeout: 5 * time.Second,
		RetryBackoff: time.Second, RetryBackoffMax: time.Minute, ConfigErrorBackoff: 10 * time.Minute,
		Pacer: upstream.NewPacer(50), Instance: "test", Version: "0.0.0",
		Now: time.Now, AfterFunc: time.AfterFunc, Logger: slog.New(slog.DiscardHandler), Metrics: discard{},
		Scrubber: func() upstream.Scrubber { return nil },
	}
	if change != nil {
		change(&cfg)
	}
	return cfg
}

// discard counts nothing.
type discard struct{}

func (discard) UpstreamCall(string, string, string, time.Duration) {}
func (discard) Rotation(string, string)                            {}
func (discard) Request(string)                                     {}
func (discard) Repaired()                                          {}
func (discard) Forget(string, string, string)                      {}
func (discard) InvalidatedElsewhere(string)                        {}
func (discard) QuotaRescue(string, string, string)                 {}
func (discard) QuotaClearBudget(string, string, int)               {}

// testLeader is the loop of the credential wx1, an app of the test kind
// (kind_test.go) against a fake WeChat, on an embedded JetStream server,
// with its token bucket open. lead makes it lead on a lease the test
// holds; it runs no follower and no look at the bucket, which the
// refresher adds.
type testLeader struct {
	c      *Credentials
	nc     *nats.Conn
	js     jetstream.JetStream
	fake   *fakewechat.Server
	url    string // the fake's
	bucket jetstream.KeyValue
}

func newTestLeader(t *testing.T, ctx context.Context, wechat fakewechat.Config, change func(*Config)) *testLeader {
	t.Helper()
	nc, js := natstest.JetStream(t)
	fake := fakewechat.New(wechat)
	fake.AddApp("wx1", "a-secret-of-some-length")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	c := New(testConfig(nc, js, change))
	c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: newTestKind(t, srv.URL, "wx1", "a-secret-of-some-length")}})
	b, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &testLeader{c: c, nc: nc, js: js, fake: fake, url: srv.URL, bucket: b}
}

// lead runs the loop's leadership on b until cleanup.
func (l *testLeader) lead(t *testing.T, ctx context.Context, b jetstream.KeyValue) {
	t.Helper()
	ctx, stop := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- l.c.Lead(ctx, b, &fakeLease{lostCh: make(chan struct{}), left: time.Hour}) }()
	t.Cleanup(func() {
		stop()
		<-led
	})
}

// refresh sends a refresh request for key (wx1 when none), waiting for the
// endpoint to be served, and returns the reply.
func (l *testLeader) refresh(t *testing.T, ctx context.Context, stale *uint64, key ...string) kv.RefreshReply {
	t.Helper()
	k := "wx1"
	if len(key) > 0 {
		k = key[0]
	}
	for {
		msg, err := l.nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(k), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: stale}))
		if err == nil {
			var reply kv.RefreshReply
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatal(err)
			}
			return reply
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for the endpoint to be served
	}
}
