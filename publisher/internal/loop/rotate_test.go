package loop

import (
	"context"
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
	l := newTestLeader(t, ctx, fakewechat.Config{}, nil)
	valid, _ := kv.EncodeCredential(kv.NewCredential("wx1", "a-valid-token", 2*time.Hour, time.Now()))
	rev, err := l.bucket.Put(ctx, "wx1", valid)
	if err != nil {
		t.Fatal(err)
	}
	l.lead(t, ctx, l.bucket) // with no follower: the refresher has seen nothing of wx1
	// Whether the first check or this request starts the rotation, it
	// looks at the key first.
	if reply := l.refresh(t, ctx, nil); reply.Error != nil || reply.Revision != rev {
		t.Errorf("the refresher answers %+v, want the stored revision %d", reply, rev)
	}
	if got := l.fake.Calls("wx1"); got != 0 {
		t.Errorf("%d token fetches: the valid token in the bucket was replaced", got)
	}
}
