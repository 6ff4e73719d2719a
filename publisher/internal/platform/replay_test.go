package platform

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestAPushWaitsForTheReplayBucketBeingOpened: a push that comes while the
// shared replay guard's bucket is being opened (at start, when WeChat's
// pushes can come first) waits for that try, within its own bound, and is
// checked against the bucket: it is no failure to warn about.
func TestAPushWaitsForTheReplayBucketBeingOpened(t *testing.T) {
	_, js := natstest.JetStream(t)
	g := newReplayGuard(js, Config{Bucket: "wechat_platform", Replicas: 1, Now: time.Now})
	b, err := js.CreateOrUpdateKeyValue(t.Context(), kv.ReplayConfig("wechat_platform", 1))
	if err != nil {
		t.Fatal(err)
	}
	// A try under way, as at start.
	trying := make(chan struct{})
	g.mu.Lock()
	g.trying = trying
	g.mu.Unlock()

	ctx := &waitProbe{Context: t.Context(), waiting: make(chan struct{})}
	checked := make(chan error, 1)
	go func() {
		_, err := g.Taken(ctx, "0123456789abcdef0123456789abcdef01234567")
		checked <- err
	}()
	select {
	case err := <-checked:
		t.Fatalf("the push was answered while the try was under way: %v", err)
	case <-ctx.waiting: // it waits on its bound, for the try
	}
	g.mu.Lock()
	g.bucket, g.trying = b, nil
	close(trying)
	g.mu.Unlock()
	if err := <-checked; err != nil {
		t.Errorf("the push found no guard: %v", err)
	}
}

// waitProbe is a context that says when someone first waits on it.
type waitProbe struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (p *waitProbe) Done() <-chan struct{} {
	p.once.Do(func() { close(p.waiting) })
	return p.Context.Done()
}
