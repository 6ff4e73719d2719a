package loop

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// TestTokenFetchedIntoADeletedBucketIsStoredAtOnce: a rotation whose write
// finds the bucket deleted creates it again and stores its token at once,
// at a revision after the last one, without waiting for the periodic look
// at the bucket (which lead alone does not run) and without a second fetch.
func TestTokenFetchedIntoADeletedBucketIsStoredAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newTestLeader(t, ctx, fakewechat.Config{Overlap: -1}, nil)
	js, fake := l.js, l.fake
	l.lead(t, ctx, l.bucket)
	refresh := func(stale *uint64) kv.RefreshReply { return l.refresh(t, ctx, stale) }
	first := refresh(nil) // answered once the first token is stored
	if first.Revision == 0 {
		t.Fatalf("first reply %+v", first)
	}

	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	fake.Issue("wx1") // the token in memory is dead: a forced refresh fetches
	reply := refresh(&first.Revision)
	if !reply.Refreshed || reply.Error != nil || reply.Revision <= first.Revision {
		t.Fatalf("refresh into the deleted bucket: %+v, want a revision past %d", reply, first.Revision)
	}
	back, err := js.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatalf("bucket not created again: %v", err)
	}
	e, err := back.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := kv.DecodeCredential("wx1", e.Value())
	if err != nil {
		t.Fatal(err)
	}
	if e.Revision() != reply.Revision || rec.Value != fake.Current("wx1") {
		t.Errorf("bucket holds revision %d, want WeChat's new token at %d", e.Revision(), reply.Revision)
	}
	if got := fake.Calls("wx1"); got != 2 {
		t.Errorf("%d token fetches, want 2", got)
	}
}

// TestBucketCreatedAgainWithRevisionsStartingOverIsRepaired: the bucket is
// deleted and created again by someone else (a replica starting meanwhile
// opens it), so its revisions start over, below those services hold. The
// leader's rotation moves the bucket's revisions past them and stores its
// one token there; it does not fetch again and again for writes that land
// below what it has seen.
func TestBucketCreatedAgainWithRevisionsStartingOverIsRepaired(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newTestLeader(t, ctx, fakewechat.Config{}, func(cfg *Config) { cfg.Pacer = upstream.NewPacer(20) })
	c, js, fake, bucket := l.c, l.js, l.fake, l.bucket
	var err error
	// A token due for replacement, at revision 30.
	due, _ := kv.EncodeCredential(kv.NewCredential("wx1", "old-token", 2*time.Hour, time.Now().Add(-115*time.Minute)))
	var last uint64
	for range 30 {
		if last, err = bucket.Put(ctx, "wx1", due); err != nil {
			t.Fatal(err)
		}
	}
	e, err := bucket.Get(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	c.Observe(e) // as the follower would
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	// Created again by someone else (an operator's nats kv add, an older
	// wxtoken): revisions from 1.
	bucket = natstest.CreateBucketAgain(t, ctx, js)
	updates, err := bucket.Watch(ctx, "wx1")
	if err != nil {
		t.Fatal(err)
	}
	defer updates.Stop()
	l.lead(t, ctx, bucket)

	var stored jetstream.KeyValueEntry
	for stored == nil {
		select {
		case e := <-updates.Updates():
			// The old token, still valid, is written back first: past
			// the old revisions, services take it in.
			if e != nil && e.Operation() == jetstream.KeyValuePut && e.Revision() > last && !strings.Contains(string(e.Value()), "old-token") {
				stored = e
			}
		case <-ctx.Done():
			t.Fatalf("no token stored past revision %d; %d token fetches", last, fake.Calls("wx1"))
		}
	}
	rec, err := kv.DecodeCredential("wx1", stored.Value())
	if err != nil {
		t.Fatal(err)
	}
	if rec.Value != fake.Current("wx1") {
		t.Error("the token past the old revisions is not WeChat's newest")
	}
	if got := fake.Calls("wx1"); got != 1 {
		t.Errorf("%d token fetches, want 1", got)
	}
}
