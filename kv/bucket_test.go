package kv_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestRecreateContinuesRevisions: a bucket created again after it was
// deleted goes on past the last revision readers may hold, with the same
// configuration; one someone else created again and wrote to is moved
// past it too, its values carried over; one that is fine is left alone.
func TestRecreateContinuesRevisions(t *testing.T) {
	ctx := testenv.Context(t, 20*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	cfg := kv.BucketConfig{History: 3}
	b, err := kv.Open(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for range 5 {
		if last, err = b.Put(ctx, "wx1", []byte("v")); err != nil {
			t.Fatal(err)
		}
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	again, err := kv.Recreate(ctx, js, cfg, last)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := again.Create(ctx, "wx1", []byte("v"))
	if err != nil || rev <= last {
		t.Errorf("first write to the recreated bucket: revision %d (%v), want one past %d", rev, err, last)
	}
	st, err := again.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if published, _ := kv.PublishesValues(ctx, again, kv.Subjects{}); st.History() != 3 || !published {
		t.Errorf("recreated bucket: history %d, values published %v", st.History(), published)
	}

	// At or past last: left as it is.
	if _, err := kv.Recreate(ctx, js, cfg, rev); err != nil {
		t.Fatal(err)
	}
	if e, err := again.Get(ctx, "wx1"); err != nil || e.Revision() != rev {
		t.Errorf("a bucket past last was changed: %v", err)
	}

	// Created again by someone else and written to, at revisions that
	// start over: moved past last, values kept.
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	other, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for _, kvs := range [][2]string{{"wx1", "old"}, {"wx1", "newest"}, {"wx2", "other"}} {
		if _, err := other.Put(ctx, kvs[0], []byte(kvs[1])); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := kv.Recreate(ctx, js, cfg, rev)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"wx1": "newest", "wx2": "other"} {
		e, err := moved.Get(ctx, key)
		if err != nil || string(e.Value()) != want || e.Revision() <= rev {
			t.Errorf("%s after the move: %v, want %q past revision %d", key, err, want, rev)
			continue
		}
	}
}
