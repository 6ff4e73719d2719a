package kv_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestRevisionsStartAtTheBucketsCreation: a bucket's revisions start at
// its creation time in milliseconds, so a bucket created again goes on
// past the old one's with no memory of them. An empty one created by
// someone else, revisions from 1, is moved there when it is opened; one
// with values is left as it is (moving it is the leader's to do).
func TestRevisionsStartAtTheBucketsCreation(t *testing.T) {
	ctx := testenv.Context(t, 20*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	before := uint64(time.Now().Add(-time.Second).UnixMilli())
	b, err := kv.Open(ctx, js, kv.BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := b.Put(ctx, "wx1", []byte("v"))
	if err != nil || first < before {
		t.Fatalf("first revision %d (%v), want at least %d, the creation time in ms", first, err, before)
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	moved, err := kv.Open(ctx, js, kv.BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if rev, err := moved.Put(ctx, "wx1", []byte("v")); err != nil || rev <= first {
		t.Errorf("first revision of an empty bucket someone else created: %d (%v), want past %d", rev, err, first)
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	filled, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := filled.Put(ctx, "wx1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	opened, err := kv.Open(ctx, js, kv.BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if e, err := opened.Get(ctx, "wx1"); err != nil || e.Revision() != 1 {
		t.Errorf("a bucket with values was moved by Open: %v", err)
	}
}

// TestRecreateContinuesRevisions: Recreate moves a bucket's revisions past
// the last one readers may hold when they are below it, with the same
// configuration, and leaves a bucket past it alone.
func TestRecreateContinuesRevisions(t *testing.T) {
	ctx := testenv.Context(t, 20*time.Second)
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	cfg := kv.BucketConfig{History: 3}
	b, err := kv.Open(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := b.Put(ctx, "wx1", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	// Readers hold a revision far past this bucket's (one of another
	// bucket's, a write not seen yet).
	last := rev + 1<<40
	again, moved, err := kv.Recreate(ctx, js, cfg, last)
	if err != nil || !moved {
		t.Fatalf("moved %v, %v", moved, err)
	}
	e, err := again.Get(ctx, "wx1")
	if err != nil || e.Revision() <= last || string(e.Value()) != "v" {
		t.Errorf("after the move: revision %d (%v), want the value past %d", e.Revision(), err, last)
	}
	st, err := again.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if published, _ := kv.PublishesValues(ctx, again, kv.Subjects{}); st.History() != 3 || !published {
		t.Errorf("recreated bucket: history %d, values published %v", st.History(), published)
	}
	if _, moved, err := kv.Recreate(ctx, js, cfg, e.Revision()); err != nil || moved {
		t.Errorf("a bucket at last was moved (%v, %v)", moved, err)
	}
}
