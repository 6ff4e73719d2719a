package kv_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestRemoveMarksTheDeleteMarker: a removal is a delete marker that says
// why, written only over the revision named; a plain delete says nothing.
func TestRemoveMarksTheDeleteMarker(t *testing.T) {
	ctx := testenv.Context(t, 10*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, History: 4})
	if err != nil {
		t.Fatal(err)
	}
	const key = "wx00000000000a0001"
	rev, err := b.Put(ctx, key, []byte("a token record"))
	if err != nil {
		t.Fatal(err)
	}
	if _, reason, err := kv.LastRemoval(ctx, js, kv.DefaultBucket, key); err != nil || reason != "" {
		t.Errorf("a value: removal %q, %v", reason, err)
	}
	if _, err := kv.Remove(ctx, js, kv.DefaultBucket, key, rev-1, kv.RemovedUnauthorized); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Errorf("a removal over another revision: %v, want ErrKeyExists", err)
	}
	marker, err := kv.Remove(ctx, js, kv.DefaultBucket, key, rev, kv.RemovedUnauthorized)
	if err != nil || marker <= rev {
		t.Fatalf("removal: revision %d, %v", marker, err)
	}
	if _, err := b.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the removed key: %v, want it gone for KV readers", err)
	}
	if got, reason, err := kv.LastRemoval(ctx, js, kv.DefaultBucket, key); err != nil || got != marker || reason != kv.RemovedUnauthorized {
		t.Errorf("LastRemoval = %d, %q, %v; want %d, unauthorized", got, reason, err, marker)
	}
	rev, _ = b.Put(ctx, key, []byte("authorized again"))
	if err := b.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	if _, reason, err := kv.LastRemoval(ctx, js, kv.DefaultBucket, key); err != nil || reason != "" {
		t.Errorf("someone's delete: removal %q, %v; want none", reason, err)
	}
	if _, reason, err := kv.LastRemoval(ctx, js, kv.DefaultBucket, "wx0000000000000new"); err != nil || reason != "" {
		t.Errorf("a key never written: removal %q, %v", reason, err)
	}
}
