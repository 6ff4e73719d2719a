package bucket_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/natstest"
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
	b, err := bucket.Open(ctx, js, bucket.Config{})
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
	natstest.CreateBucketAgain(t, ctx, js)
	moved, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if rev, err := moved.Put(ctx, "wx1", []byte("v")); err != nil || rev <= first {
		t.Errorf("first revision of an empty bucket someone else created: %d (%v), want past %d", rev, err, first)
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	filled := natstest.CreateBucketAgain(t, ctx, js)
	if _, err := filled.Put(ctx, "wx1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	opened, err := bucket.Open(ctx, js, bucket.Config{})
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
	cfg := bucket.Config{History: 3}
	b, err := bucket.Open(ctx, js, cfg)
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
	again, moved, err := bucket.Recreate(ctx, js, cfg, last)
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
	if _, moved, err := bucket.Recreate(ctx, js, cfg, e.Revision()); err != nil || moved {
		t.Errorf("a bucket at last was moved (%v, %v)", moved, err)
	}
}

// TestOpenAndBind: Bind finds no bucket before Open, the one Open
// creates with the configuration asked for after; Open again updates it.
func TestOpenAndBind(t *testing.T) {
	ctx := testenv.Context(t, 10*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	if _, err := kv.Bind(ctx, js, "nothing_here"); err == nil || !errors.Is(err, kv.ErrNoBucket) {
		t.Fatalf("Bind of a missing bucket: %v", err)
	}
	b, err := bucket.Open(ctx, js, bucket.Config{Replicas: 1, History: 3})
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bucket() != kv.DefaultBucket || st.History() != 3 {
		t.Errorf("bucket %s history %d", st.Bucket(), st.History())
	}
	if st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage != jetstream.FileStorage {
		t.Error("bucket is not on file storage")
	}
	if _, err := kv.Bind(ctx, js, ""); err != nil {
		t.Errorf("Bind after Open: %v", err)
	}
	// Open again with another history updates the bucket in place.
	if b, err = bucket.Open(ctx, js, bucket.Config{History: 5}); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.Status(ctx); st.History() != 5 {
		t.Errorf("history after reopen %d, want 5", st.History())
	}
	if _, err := bucket.Open(ctx, js, bucket.Config{History: 65}); err == nil {
		t.Error("history 65 accepted")
	}
}
