package kvwatch_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// stoppableBucket is a real bucket whose watchers the test can stop, which
// closes their update channels the way a lost connection does.
type stoppableBucket struct {
	jetstream.KeyValue
	mu       sync.Mutex
	watchers []jetstream.KeyWatcher
	watched  chan struct{}
	gate     chan struct{} // a watch waits for a value here before it starts
}

func (b *stoppableBucket) Watch(ctx context.Context, key string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	<-b.gate
	w, err := b.KeyValue.Watch(ctx, key, opts...)
	if err == nil {
		b.mu.Lock()
		b.watchers = append(b.watchers, w)
		b.mu.Unlock()
		b.watched <- struct{}{}
	}
	return w, err
}

func (b *stoppableBucket) stopCurrent() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchers[len(b.watchers)-1].Stop()
}

func TestFollowerRewatchesAndResumes(t *testing.T) {
	ctx := testenv.Context(t, 20*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	real, err := bucket.Open(ctx, js, bucket.Config{History: 5})
	if err != nil {
		t.Fatal(err)
	}
	b := &stoppableBucket{KeyValue: real, watched: make(chan struct{}, 8), gate: make(chan struct{}, 8)}
	b.gate <- struct{}{}

	entries := make(chan uint64, 16)
	errs := make(chan error, 8)
	f := &kvwatch.Follower{Bucket: b, Key: "wx1",
		OnEntry: func(e jetstream.KeyValueEntry) { entries <- e.Revision() },
		OnError: func(err error) { errs <- err }}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.Run(fctx) }()

	put := func(v string) uint64 {
		rev, err := real.Put(ctx, "wx1", []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	next := func() uint64 {
		select {
		case r := <-entries:
			return r
		case <-ctx.Done():
			t.Fatal("no entry")
			return 0
		}
	}
	<-b.watched
	r1 := put("one")
	if got := next(); got != r1 {
		t.Fatalf("first entry revision %d, want %d", got, r1)
	}

	b.stopCurrent() // the channel closes under the follower
	if err := <-errs; err != kvwatch.ErrWatchClosed {
		t.Errorf("reported %v, want ErrWatchClosed", err)
	}
	// Two revisions written while no watcher runs: a rewatch that did not
	// resume would deliver only the last.
	r2, r3 := put("two"), put("three")
	b.gate <- struct{}{}
	<-b.watched
	r4 := put("four")
	for _, want := range []uint64{r2, r3, r4} {
		if got := next(); got != want {
			t.Errorf("after the rewatch: revision %d, want %d", got, want)
		}
	}
	select {
	case r := <-entries:
		t.Errorf("revision %d delivered twice", r)
	default:
	}
	stop()
	<-done
}
