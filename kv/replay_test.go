package kv_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestTakePushOnce: a push's signature is taken once, any number of
// replicas may record it, and what is not a signature is no key.
func TestTakePushOnce(t *testing.T) {
	ctx := testenv.Context(t, 10*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	b, err := js.CreateOrUpdateKeyValue(ctx, kv.ReplayConfig(kv.DefaultPlatformBucket, 1))
	if err != nil {
		t.Fatal(err)
	}
	if b.Bucket() != "wechat_platform_replay" {
		t.Errorf("bucket %s", b.Bucket())
	}
	const sig = "0123456789ABCDEF0123456789abcdef01234567"
	if taken, err := kv.PushTaken(ctx, b, sig); err != nil || taken {
		t.Fatalf("before: taken %v, %v", taken, err)
	}
	for range 2 {
		if err := kv.TakePush(ctx, b, sig, kv.TakenPush{ComponentAppID: platformApp, TakenAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if taken, err := kv.PushTaken(ctx, b, sig); err != nil || !taken {
		t.Errorf("after: taken %v, %v", taken, err)
	}
	for _, bad := range []string{"", "0123", sig + "0", "0123456789abcdef0123456789abcdef0123456>", "g123456789abcdef0123456789abcdef01234567"} {
		if _, err := kv.PushTaken(ctx, b, bad); !errors.Is(err, kv.ErrInvalidSignature) {
			t.Errorf("PushTaken(%q): %v", bad, err)
		}
		if err := kv.TakePush(ctx, b, bad, kv.TakenPush{ComponentAppID: platformApp}); !errors.Is(err, kv.ErrInvalidSignature) {
			t.Errorf("TakePush(%q): %v", bad, err)
		}
	}
}
