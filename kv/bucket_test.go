package kv_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestRecreateContinuesRevisions: a bucket created again after it was
// deleted goes on after the last revision readers may hold, with the same
// configuration; one someone else filled again is reported.
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
	if rev, err := again.Create(ctx, "wx1", []byte("v")); err != nil || rev != last+1 {
		t.Errorf("first write to the recreated bucket: revision %d (%v), want %d", rev, err, last+1)
	}
	st, err := again.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if published, _ := kv.PublishesValues(ctx, again, kv.Subjects{}); st.History() != 3 || !published {
		t.Errorf("recreated bucket: history %d, values published %v", st.History(), published)
	}

	// Existing and past last: nothing to do.
	if _, err := kv.Recreate(ctx, js, cfg, last); err != nil {
		t.Errorf("recreating an existing bucket: %v", err)
	}

	// Created again by someone else, and written to, at revisions that
	// start over.
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	other, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Put(ctx, "wx1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Recreate(ctx, js, cfg, last); !errors.Is(err, kv.ErrRevisionsWentBack) {
		t.Errorf("recreating a bucket refilled from revision 1: %v, want ErrRevisionsWentBack", err)
	}
}
