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

// TestFirstFetchReadsTheKeyFirst: a leader that knows nothing of an app's
// key (an app a reload just added whose read failed, say) looks at the key
// before it fetches: a valid token there is kept, not killed by a fetch.
func TestFirstFetchReadsTheKeyFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := jetStream(t)
	fake := fakewechat.New(fakewechat.Config{})
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
	valid, _ := kv.Encode(kv.NewRecord("wx1", "a-valid-token", 2*time.Hour, time.Now()))
	rev, err := bucket.Put(ctx, "wx1", valid)
	if err != nil {
		t.Fatal(err)
	}
	// lead alone runs no follower: the refresher has seen nothing of wx1.
	leadCtx, stop := context.WithCancel(ctx)
	led := make(chan error, 1)
	go func() { led <- r.lead(leadCtx, bucket, &fakeLease{lostCh: make(chan struct{}), left: time.Hour}) }()
	t.Cleanup(func() {
		stop()
		<-led
	})
	var reply kv.RefreshReply
	for reply.Revision == 0 {
		msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh("wx1"), nil)
		if err == nil {
			reply = kv.RefreshReply{}
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatal(err)
			}
		} else if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // waiting for the endpoint, and the first check
	}
	if reply.Revision != rev {
		t.Errorf("the refresher names revision %d, want the stored %d", reply.Revision, rev)
	}
	if got := fake.Calls("wx1"); got != 0 {
		t.Errorf("%d token fetches: the valid token in the bucket was replaced", got)
	}
}
