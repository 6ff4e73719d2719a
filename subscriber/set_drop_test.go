package subscriber

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestSetReadsTheValuesNATSDropped: values nats.go drops because the
// process takes them in too slowly (a slow consumer: here its queue holds
// two, and the Set is held up while a burst comes) are read from the
// bucket, and the Set says so.
func TestSetReadsTheValuesNATSDropped(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := func(i int) string { return fmt.Sprintf("wxd%015d", i) }
	put := func(i int, token string) (uint64, []byte) {
		data, _ := kv.EncodeCredential(kv.NewCredential(key(i), token, time.Hour, time.Now()))
		rev, err := b.Put(ctx, key(i), data)
		if err != nil {
			t.Fatal(err)
		}
		return rev, data
	}
	put(0, "before-the-set")
	logs := &logBuffer{}
	setConn := testenv.Connect(t, nc.ConnectedUrl())
	set, err := NewSet(ctx, setConn,
		WithLogger(slog.New(slog.NewTextHandler(logs, nil))),
		func(o *options) error { o.pendingLimit = 2; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	const burst = 20
	revisions := map[string]uint64{}
	set.applying.Lock() // the Set takes nothing in: nats.go's queue fills
	for i := 1; i <= burst; i++ {
		rev, data := put(i, fmt.Sprintf("burst-%d", i))
		revisions[key(i)] = rev
		if err := nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, key(i), rev, data)); err != nil {
			t.Fatal(err)
		}
	}
	// The values are on the server once nc's flush returns, and through
	// the Set's connection (queued, or dropped) once its own does: the
	// server answers its ping after them.
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := setConn.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	set.applying.Unlock()

	for k, rev := range revisions {
		for set.Token(k).Revision < rev {
			select {
			case <-set.Updated():
			case <-ctx.Done():
				t.Fatalf("%s: revision %d held, %d stored; log:\n%s", k, set.Token(k).Revision, rev, logs)
			}
		}
	}
	if !strings.Contains(logs.String(), "values were dropped") {
		t.Errorf("nothing was dropped, or the Set did not say so; the test proves nothing:\n%s", logs)
	}
}

type logBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}
