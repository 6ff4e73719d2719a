package publisher

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// testLeader is a refresher of the app wx1, against a fake WeChat, on an
// embedded JetStream server, with its token bucket open. lead makes it
// lead on a lease the test holds; it runs no follower and no look at the
// bucket, which Run adds.
type testLeader struct {
	r      *Refresher
	nc     *nats.Conn
	js     jetstream.JetStream
	fake   *fakewechat.Server
	bucket jetstream.KeyValue
}

func newTestLeader(t *testing.T, ctx context.Context, wechat fakewechat.Config, cfg Config) *testLeader {
	t.Helper()
	nc, js := jetStream(t)
	fake := fakewechat.New(wechat)
	fake.AddApp("wx1", "a-secret-of-some-length")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	cfg.Apps = []App{{AppID: "wx1", Secret: NewSecret("a-secret-of-some-length")}}
	cfg.UpstreamURL, cfg.Logger = srv.URL, slog.New(slog.DiscardHandler)
	r, err := New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	bucket, err := bucket.Open(ctx, js, r.bucketConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &testLeader{r: r, nc: nc, js: js, fake: fake, bucket: bucket}
}

// lead runs the refresher's leadership on bucket until cleanup.
func (l *testLeader) lead(t *testing.T, ctx context.Context, bucket jetstream.KeyValue) {
	t.Helper()
	ctx, stop := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- l.r.lead(ctx, bucket, &fakeLease{lostCh: make(chan struct{}), left: time.Hour}) }()
	t.Cleanup(func() {
		stop()
		<-led
	})
}

// refresh sends a refresh request for wx1, waiting for the endpoint to be
// served, and returns the reply.
func (l *testLeader) refresh(t *testing.T, ctx context.Context, stale *uint64) kv.RefreshReply {
	t.Helper()
	for {
		msg, err := l.nc.RequestWithContext(ctx, kv.Subjects{}.Refresh("wx1"), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: stale}))
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
