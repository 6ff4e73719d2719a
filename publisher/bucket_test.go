package publisher

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// TestTokenFetchedIntoADeletedBucketIsStoredAtOnce: a rotation whose write
// finds the bucket deleted creates it again and stores its token at once,
// at a revision after the last one, without waiting for the periodic look
// at the bucket (which lead alone does not run) and without a second fetch.
func TestTokenFetchedIntoADeletedBucketIsStoredAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	fake := fakewechat.New(fakewechat.Config{Overlap: -1})
	fake.AddApp("wx1", "a-secret-of-some-length")
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	r, err := New(nc, Config{Apps: []App{{AppID: "wx1", Secret: NewSecret("a-secret-of-some-length")}},
		UpstreamURL: wechat.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	bucket, err := kv.Open(ctx, js, r.bucketConfig())
	if err != nil {
		t.Fatal(err)
	}
	leadCtx, stop := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- r.lead(leadCtx, bucket, &fakeLease{lostCh: make(chan struct{}), left: time.Hour}) }()
	t.Cleanup(func() {
		stop()
		<-led
	})
	refresh := func(stale *uint64) kv.RefreshReply {
		t.Helper()
		for {
			msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh("wx1"), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: stale}))
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
	first := refresh(nil) // answered once the first token is stored
	if first.Revision == 0 {
		t.Fatalf("first reply %+v", first)
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	fake.Issue("wx1") // the token in memory is dead: a forced refresh fetches
	reply := refresh(&first.Revision)
	if !reply.Refreshed || reply.Error != nil || reply.Revision != first.Revision+1 {
		t.Fatalf("refresh into the deleted bucket: %+v, want revision %d", reply, first.Revision+1)
	}
	back, err := js.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatalf("bucket not created again: %v", err)
	}
	e, err := back.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := kv.DecodeFor("wx1", e.Value())
	if err != nil {
		t.Fatal(err)
	}
	if e.Revision() != reply.Revision || rec.AccessToken != fake.Current("wx1") {
		t.Errorf("bucket holds revision %d, want WeChat's new token at %d", e.Revision(), reply.Revision)
	}
	if got := fake.Calls("wx1"); got != 2 {
		t.Errorf("%d token fetches, want 2", got)
	}
}
