package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestSubscribersUseNoConsumer: a subscriber follows its token through the
// values the refresher publishes, so fifty of them add no JetStream consumer
// (servers limit a stream to 1000 by default) and still see each rotation.
func TestSubscribersUseNoConsumer(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{})
	testenv.Bucket(t, ctx, sys.nc)
	awaitEndpoint(t, ctx, sys.nc, appA) // the refresher leads and wrote the first token
	js, _ := jetstream.New(sys.nc)
	stream, err := js.Stream(ctx, "KV_"+kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	consumers := func() int {
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Consumers
	}
	before := consumers()
	var subs []*subscriber.Subscriber
	for range 50 {
		subs = append(subs, newSubscriber(t, ctx, testenv.Connect(t, sys.url)))
	}
	if after := consumers(); after != before {
		t.Errorf("%d consumers on the token stream with 50 subscribers, %d without", after, before)
	}
	sys.fake.Issue(appA)
	fresh, err := subs[0].Refresh(ctx, subs[0].Token().Revision)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		if tok := awaitNewer(t, ctx, s, fresh.Revision-1); tok != fresh {
			t.Errorf("subscriber %d holds revision %d, want %d", i, tok.Revision, fresh.Revision)
		}
	}
}

// TestSubscriberWatchesBucketWithoutValues: nothing announces the values of
// a bucket made by other means (an older refresher, a server without bucket
// metadata); the subscriber watches it instead.
func TestSubscriberWatchesBucketWithoutValues(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	put := func(token string) uint64 { return putRecord(t, ctx, b, token, time.Hour) }
	put("first")
	sub := newSubscriber(t, ctx, nc)
	if sub.Token().Value != "first" {
		t.Fatalf("token %q", sub.Token().Value)
	}
	rev := put("second")
	if tok := awaitNewer(t, ctx, sub, rev-1); tok.Value != "second" {
		t.Errorf("after a put: %q", tok.Value)
	}
}

// TestWatchingSubscriberTellsARemovalFromADelete: a subscriber that
// watches the key (no values published) reads the delete marker's header:
// a key removed for good is said removed, one deleted by someone (which
// the refresher writes again) keeps its last token, and a value stored
// after a removal ends it.
func TestWatchingSubscriberTellsARemovalFromADelete(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, History: 4})
	if err != nil {
		t.Fatal(err)
	}
	put := func(token string) uint64 { return putRecord(t, ctx, b, token, time.Hour) }
	put("first")
	logs := newNotifyingBuffer()
	sub := newSubscriber(t, ctx, nc, subscriber.WithLogger(textLogger(logs)))

	if err := b.Delete(ctx, appA); err != nil {
		t.Fatal(err)
	}
	if err := logs.waitFor(ctx, "token key was deleted; keeping the last token"); err != nil {
		t.Fatal(err)
	}
	if tok, err := sub.Current(); err != nil || tok.Value != "first" {
		t.Errorf("after someone's delete: %q, %v; want the last token", tok.Value, err)
	}
	rev := put("second")
	awaitNewer(t, ctx, sub, rev-1)

	removedAt, err := kv.Remove(ctx, js, kv.DefaultBucket, appA, rev, kv.RemovedUnauthorized)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := sub.Current(); !errors.Is(err, subscriber.ErrRemoved); _, err = sub.Current() {
		select {
		case <-sub.Updated():
		case <-ctx.Done():
			t.Fatalf("never said removed: %v", err)
		}
	}
	if _, err := sub.Current(); !strings.Contains(err.Error(), fmt.Sprintf("%s was removed at revision %d", appA, removedAt)) {
		t.Errorf("Current: %v", err)
	}
	awaitNewer(t, ctx, sub, put("third")-1)
	if tok, err := sub.Current(); err != nil || tok.Value != "third" {
		t.Errorf("a value after the removal: %q, %v; want it served", tok.Value, err)
	}
}

// TestSubscriberFallsBackWhenValuesAreForbidden: with a nats.conf from
// before the published values (no subscribe permission on them), the
// subscriber notices the refusal and watches the bucket.
func TestSubscriberFallsBackWhenValuesAreForbidden(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := rolesServerEdited(t, func(conf string) string {
		service := strings.Index(conf, "SERVICE = {")
		i := service + strings.Index(conf[service:], `"wechat.token.value.>",`)
		return conf[:i] + conf[i+len(`"wechat.token.value.>",`):]
	})
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	testenv.Refresher(t, connectAs(t, srv, "refresher").nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url})
	service := connectAs(t, srv, "service")
	var logs syncBuffer
	sub, err := subscriber.New(ctx, service.nc, appA, subscriber.WithLogger(logs.logger()))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	fake.Issue(appA)
	fresh, err := sub.Refresh(ctx, sub.Token().Revision)
	if err != nil || fresh.Value != fake.Current(appA) {
		t.Fatalf("refresh without the value permission: %v", err)
	}
	if !strings.Contains(logs.String(), "may not subscribe to the published token") {
		t.Errorf("the refusal was not logged:\n%s", logs.String())
	}
}

// TestRefreshReadsAValueNeverAnnounced: a refresher that dies between
// writing a new token and announcing it leaves subscribers uninformed;
// Refresh, told of the new revision, reads it from the bucket.
func TestRefreshReadsAValueNeverAnnounced(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(token string) uint64 { return putRecord(t, ctx, b, token, time.Hour) }
	put("first")
	// A refresher that writes the new token and replies, but never
	// publishes the value.
	if _, err := nc.Subscribe(kv.Subjects{}.Refresh(appA), func(m *nats.Msg) {
		rev := put("second")
		reply, _ := json.Marshal(kv.RefreshReply{AppID: appA, Revision: rev, ExpiresAt: time.Now().Add(time.Hour), Refreshed: true})
		m.Respond(reply)
	}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	sub := newSubscriber(t, ctx, nc, subscriber.WithLogger(logs.logger()))
	fresh, err := sub.Refresh(ctx, sub.Token().Revision)
	if err != nil || fresh.Value != "second" {
		t.Fatalf("Refresh: %+v, %v", fresh, err)
	}
	if !strings.Contains(logs.String(), "not announced in time") {
		t.Error("the fallback did not run: the value came by another way")
	}
}

// putRecord writes a valid record for appA straight into the bucket, as an
// operator (or a leader that dies before announcing it) would.
func putRecord(t *testing.T, ctx context.Context, b jetstream.KeyValue, token string, lifetime time.Duration) uint64 {
	t.Helper()
	data, _ := kv.EncodeCredential(kv.NewCredential(appA, token, lifetime, time.Now()))
	rev, err := b.Put(ctx, appA, data)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestLeaderAnnouncesValuesItDidNotWrite: a value put into the bucket by
// someone else reaches subscribers at once: the leader sees it and
// announces it.
func TestLeaderAnnouncesValuesItDidNotWrite(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startSystem(t, fakewechat.Config{}, publisher.Config{})
	sub := newSubscriber(t, ctx, sys.nc)
	rev := putRecord(t, ctx, testenv.Bucket(t, ctx, sys.nc), "put-by-hand", 2*time.Hour)
	if tok := awaitNewer(t, ctx, sub, rev-1); tok.Value != "put-by-hand" {
		t.Errorf("subscriber holds %q", tok.Value)
	}
}

// TestNewLeaderAnnouncesWhatItFinds: a value stored by a leader that died
// before announcing it reaches subscribers when the next leader starts.
func TestNewLeaderAnnouncesWhatItFinds(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	cfg := publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url}
	first := testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), cfg)
	nc := testenv.Connect(t, srv.ClientURL())
	sub := newSubscriber(t, ctx, nc)
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	// Stored, never announced.
	rev := putRecord(t, ctx, testenv.Bucket(t, ctx, nc), "stored-then-died", 2*time.Hour)
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), cfg)
	if tok := awaitNewer(t, ctx, sub, rev-1); tok.Value != "stored-then-died" {
		t.Errorf("subscriber holds %q", tok.Value)
	}
}

// TestSubscriberLooksForANewTokenBeforeExpiry: with no refresher to
// announce anything, a subscriber whose token is about to expire reads the
// bucket and finds the newer one.
func TestSubscriberLooksForANewTokenBeforeExpiry(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{}) // values are said to be published
	if err != nil {
		t.Fatal(err)
	}
	putRecord(t, ctx, b, "short-lived", 2*time.Second)
	sub := newSubscriber(t, ctx, nc)
	rev := putRecord(t, ctx, b, "its-successor", 2*time.Hour)
	if tok := awaitNewer(t, ctx, sub, rev-1); tok.Value != "its-successor" {
		t.Errorf("subscriber holds %q", tok.Value)
	}
}
