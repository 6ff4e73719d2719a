package test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// leaseHolder waits until the lease bucket exists and names a holder, and
// returns it.
func leaseHolder(t *testing.T, ctx context.Context, js jetstream.JetStream) kv.LeaseHolder {
	t.Helper()
	for {
		b, err := js.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket))
		if err == nil {
			var e jetstream.KeyValueEntry
			if e, err = b.Get(ctx, kv.LeaseKey); err == nil {
				h, err := kv.DecodeLeaseHolder(e.Value())
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no lease holder: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTime is the time of the first line of p's text log that holds msg.
func logTime(t *testing.T, p *process, msg string) time.Time {
	t.Helper()
	for _, line := range strings.Split(p.output.String(), "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		if stamp, ok := strings.CutPrefix(strings.Fields(line)[0], "time="); ok {
			at, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil {
				t.Fatal(err)
			}
			return at
		}
	}
	t.Fatalf("%s never logged %q", p.name, msg)
	return time.Time{}
}

// TestDeletedBucketsComeBack deletes the token and lease buckets under two
// `wxtoken serve` replicas and a subscriber.
//
// While the token is valid, the leader creates both buckets again, keeps
// its lease, writes the token back and announces it: the subscriber gets
// the same token at a newer revision, a new subscriber can start, and
// WeChat is not called. Deleted again, with WeChat rejecting the token: a
// refresh stores the one token fetched (no second fetch) and the
// subscriber gets it. Deleted and created again at once by someone else,
// revisions starting over at 1: the leader moves them past the
// subscriber's.
// The standby followed all of it: when the leader is
// killed, it takes over with the newest revision and fetches nothing.
func TestDeletedBucketsComeBack(t *testing.T) {
	wallClock := startClockWatch()
	ctx := testenv.Context(t, 90*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	js, _ := jetstream.New(nc)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	fake.AddApp(appA, "secret-of-a")
	env := serveEnv(srv.ClientURL(), wechatURL, "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_HISTORY=3")
	one := startWxtoken(t, "one", env, "serve", "--instance", "one")
	one.waitOutput(t, ctx, "token rotated")
	two := startWxtoken(t, "two", env, "serve", "--instance", "two")
	two.waitOutput(t, ctx, "standing by")
	sub := newSubscriber(t, ctx, nc)
	first := sub.Token()
	held := leaseHolder(t, ctx, js)

	// While the token is valid.
	for _, name := range []string{kv.DefaultBucket, kv.LeaseBucket(kv.DefaultBucket)} {
		if err := js.DeleteKeyValue(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	deleted := time.Now()
	back := awaitNewer(t, ctx, sub, first.Revision)
	arrived := time.Now()
	one.waitOutput(t, ctx, "the token bucket is repaired")
	t.Logf("buckets deleted; token back in the subscriber %s later, %s after the leader began to create the bucket again",
		arrived.Sub(deleted).Round(time.Millisecond), arrived.Sub(logTime(t, one, `msg="repairing the token bucket"`)).Round(time.Millisecond))
	if back.Value != first.Value {
		t.Error("the subscriber got another token: WeChat was asked although the token was valid")
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token fetches, want 1", got)
	}
	b := testenv.Bucket(t, ctx, nc)
	st, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 3 || st.BackingStore() != "JetStream" {
		t.Errorf("recreated bucket: history %d, store %s; want the configured 3", st.History(), st.BackingStore())
	}
	if published, err := kv.PublishesValues(ctx, b, kv.Subjects{}); err != nil || !published {
		t.Errorf("recreated bucket does not say values are published: %v", err)
	}
	if info := st.(*jetstream.KeyValueBucketStatus).StreamInfo(); info.Config.Storage != jetstream.FileStorage {
		t.Errorf("recreated bucket has %s storage", info.Config.Storage)
	}
	if tok := newSubscriber(t, ctx, testenv.Connect(t, srv.ClientURL())).Token(); tok.Value != back.Value || tok.Revision != back.Revision {
		t.Errorf("a new subscriber got %+v, want %+v", tok, back)
	}
	if jump := wallClock.jump(); jump > time.Second {
		// The server expires the lease by its wall clock: a jump of it
		// (a paused VM) ends the lease whatever the bucket did. The leader
		// then takes it again; the standby still must not.
		t.Logf("the wall clock jumped %s during the test: checking only that one leads", jump.Round(time.Millisecond))
		if now := leaseHolder(t, ctx, js); now.Instance != held.Instance {
			t.Errorf("lease held by %+v after the deletion, want %s still", now, held.Instance)
		}
		if strings.Contains(two.output.String(), "became leader") {
			t.Errorf("two became leader:\n%s", two.output.String())
		}
	} else {
		if now := leaseHolder(t, ctx, js); now != held {
			t.Errorf("lease held by %+v after the deletion, want %+v still", now, held)
		}
		for _, p := range []*process{one, two} {
			if strings.Contains(p.output.String(), "leadership lost") || strings.Count(p.output.String(), "became leader") > 1 {
				t.Errorf("%s lost or changed leadership:\n%s", p.name, p.output.String())
			}
		}
	}
	if !strings.Contains(one.output.String(), `level=ERROR msg="repairing the token bucket" bucket=wechat_tokens why="publisher: the token bucket wechat_tokens is gone (deleted?)"`) {
		t.Error("the leader did not say loudly that it recreated the bucket")
	}

	// Deleted again, with the token dead: the token fetched goes in, once.
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	fake.Issue(appA)
	asked := time.Now()
	reply := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: &back.Revision})
	if !reply.Refreshed || reply.Revision <= back.Revision {
		t.Fatalf("refresh after the second deletion: %+v", reply)
	}
	fresh := awaitNewer(t, ctx, sub, back.Revision)
	t.Logf("deleted again: a refresh (check, fetch, create the bucket, store) reached the subscriber in %s",
		time.Since(asked).Round(time.Millisecond))
	if fresh.Value != fake.Current(appA) || fresh.Revision != reply.Revision {
		t.Errorf("subscriber holds revision %d, want WeChat's new token at %d", fresh.Revision, reply.Revision)
	}
	if got := fake.Calls(appA); got != 2 {
		t.Errorf("%d token fetches, want 2: the token fetched after the deletion was fetched again", got)
	}

	// Deleted and at once created again by someone else (nats kv add):
	// its revisions start over, below the subscriber's. The leader moves
	// them past and writes the token back.
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, History: 3, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	moved := awaitNewer(t, ctx, sub, fresh.Revision)
	if moved.Value != fresh.Value {
		t.Error("another token after the revisions were moved")
	}
	if got := fake.Calls(appA); got != 2 {
		t.Errorf("%d token fetches after the revisions were moved, want 2", got)
	}

	// The standby followed the recreated bucket.
	one.cmd.Process.Signal(syscall.SIGKILL)
	two.waitOutput(t, ctx, "became leader")
	if reply := awaitEndpoint(t, ctx, nc, appA); reply.Revision != moved.Revision {
		t.Errorf("after the takeover the leader names revision %d, want %d", reply.Revision, moved.Revision)
	}
	if got := fake.Calls(appA); got != 2 {
		t.Errorf("%d token fetches after the takeover, want 2", got)
	}
}

// clockWatch tells how far the wall clock moved apart from the monotonic
// one since it started: a VM paused and resumed, or a clock stepped.
type clockWatch struct{ wall, mono time.Time }

func startClockWatch() clockWatch {
	now := time.Now()
	return clockWatch{wall: now.Round(0), mono: now}
}

// jump is the drift so far, in either direction.
func (c clockWatch) jump() time.Duration {
	now := time.Now()
	d := now.Round(0).Sub(c.wall) - now.Sub(c.mono)
	return max(d, -d)
}
