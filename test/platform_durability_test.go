package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// durabilityAuthorizers is how many accounts the durability test's
// platform keeps tokens for.
const durabilityAuthorizers = 1000

// rotations counts, per key, the tokens written to the token bucket.
type rotations struct {
	mu      sync.Mutex
	puts    map[string]int
	changed chan struct{} // closed and replaced at every put
}

func followRotations(t *testing.T, b jetstream.KeyValue) *rotations {
	r := &rotations{puts: map[string]int{}, changed: make(chan struct{})}
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: ">", OnEntry: func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			return
		}
		r.mu.Lock()
		r.puts[e.Key()]++
		close(r.changed)
		r.changed = make(chan struct{})
		r.mu.Unlock()
	}})
	return r
}

func (r *rotations) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int, len(r.puts))
	for k, v := range r.puts {
		m[k] = v
	}
	return m
}

// awaitEach waits until every key has more puts than since counts.
func (r *rotations) awaitEach(t *testing.T, ctx context.Context, what string, keys []string, since map[string]int) {
	t.Helper()
	r.awaitSome(t, ctx, what, keys, since, len(keys))
}

// awaitSome waits until n of the keys have more puts than since counts.
func (r *rotations) awaitSome(t *testing.T, ctx context.Context, what string, keys []string, since map[string]int, n int) {
	t.Helper()
	for {
		r.mu.Lock()
		behind := 0
		for _, k := range keys {
			if r.puts[k] <= since[k] {
				behind++
			}
		}
		changed := r.changed
		r.mu.Unlock()
		if len(keys)-behind >= n {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("%s: %d of %d authorizers have no new token", what, behind, len(keys))
		}
	}
}

// refreshOrder checks, live, that no authorizer's refresh token in the
// platform bucket is ever replaced by one WeChat issued before it.
type refreshOrder struct {
	mu         sync.Mutex
	last       map[string]int // key to the serial of its newest refresh token
	writes     int
	violations []string
}

func followRefreshOrder(t *testing.T, b jetstream.KeyValue, fake *fakewechat.Server) *refreshOrder {
	o := &refreshOrder{last: map[string]int{}}
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: ">", OnEntry: func(e jetstream.KeyValueEntry) {
		rec, err := kv.DecodeAuthorizer(e.Key(), e.Value())
		if e.Operation() != jetstream.KeyValuePut || err != nil || rec.RefreshToken == "" {
			return
		}
		serial := fake.RefreshSerial(rec.RefreshToken)
		o.mu.Lock()
		defer o.mu.Unlock()
		o.writes++
		if serial < o.last[e.Key()] {
			o.violations = append(o.violations, fmt.Sprintf("%s: refresh token #%d replaced by the older #%d at revision %d",
				rec.AppID, o.last[e.Key()], serial, e.Revision()))
		}
		o.last[e.Key()] = max(o.last[e.Key()], serial)
	}})
	return o
}

// refusedRefreshToken is WeChat's refusal of a refresh token (61023) as
// the refresher logs it: the code alone may be part of a number.
var refusedRefreshToken = regexp.MustCompile(`errcode[= ]61023\b`)

// TestAuthorizersSurviveKillsRestartsAndANodeLost: 1000 authorizers whose
// tokens live 30 s refresh all the time while the leading refresher process
// is SIGKILLed, the whole NATS cluster restarts, and one of its three nodes
// is lost for good. Afterwards the platform bucket holds every authorizer's
// newest refresh token (none was ever replaced by an older one), every
// token in the token bucket works, and no account would have to authorize
// again.
func TestAuthorizersSurviveKillsRestartsAndANodeLost(t *testing.T) {
	ctx := testenv.Context(t, 300*time.Second)
	began := time.Now()
	opts, urls := clusterOptions(t)
	servers, stops := make([]*server.Server, 3), make([]func(), 3)
	startAll := func() {
		for i, o := range opts {
			servers[i], stops[i] = startServer(t, o)
		}
		awaitMetaLeader(t, ctx, servers, 3)
	}
	startAll()
	nc := testenv.Connect(t, urls)

	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 30 * time.Second})
	if err := fake.AddPlatform(componentApp, componentSecret, componentToken, componentAESKey); err != nil {
		t.Fatal(err)
	}
	// The accounts authorized the platform before wxtoken ran: their
	// refresh tokens come from another system's store.
	js, _ := jetstream.New(nc)
	platformBucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16, Replicas: 3,
		Storage: jetstream.FileStorage, Description: "wxtoken: third-party platforms' verify tickets and authorizers' refresh tokens (refresher only)"})
	if err != nil {
		t.Fatal(err)
	}
	awaitBucketAnswers(t, ctx, platformBucket)
	authorizers := make([]string, durabilityAuthorizers)
	for i := range authorizers {
		authorizers[i] = fmt.Sprintf("wx%016x", 0xa000000+i)
		refresh, err := fake.GrantRefreshToken(componentApp, authorizers[i])
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := kv.UpdateAuthorizer(ctx, platformBucket, componentApp, authorizers[i], func(kv.Authorizer, bool) (kv.Authorizer, bool) {
			return kv.Authorizer{RefreshToken: refresh, IssuedAt: time.Now()}, true
		}); err != nil {
			t.Fatal(err)
		}
	}
	order := followRefreshOrder(t, platformBucket, fake)
	tokens := openBucket(t, ctx, nc)
	rotated := followRotations(t, tokens)

	dir := t.TempDir()
	appsFile := filepath.Join(dir, "apps.yaml")
	os.WriteFile(appsFile, []byte(fmt.Sprintf("platforms:\n  - component_appid: %s\n    secret: %s\n    message_token: %s\n    encoding_aes_key: %s\n",
		componentApp, componentSecret, componentToken, componentAESKey)), 0o600)
	env := []string{"NATS_URL=" + urls, "WECHAT_BASE_URL=" + wechatURL, "WXTOKEN_APPS=" + appsFile, "WXTOKEN_REPLICAS=3",
		"WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_UPSTREAM_RATE=400", "WXTOKEN_SCHEDULE=@every 5s"}
	replica := func(name string) (*process, string) {
		port := freePort(t)
		p := startWxtoken(t, name, env, "serve", "--instance", name, "--callback-addr", fmt.Sprintf("127.0.0.1:%d", port))
		return p, fmt.Sprintf("http://127.0.0.1:%d/wechat/platform/events", port)
	}
	one, _ := replica("one")
	one.waitOutput(t, ctx, "leading")
	two, hookTwo := replica("two")
	two.waitOutput(t, ctx, "standing by")
	// WeChat's push reaches either replica behind the load balancer.
	if _, answer, err := fake.PushTicket(ctx, hookTwo, componentApp); err != nil || answer != "success" {
		t.Fatalf("push to the standby: %q, %v", answer, err)
	}
	// Each fault strikes when half the authorizers have rotated since the
	// last: in the middle of a stride of refreshes.
	half := len(authorizers) / 2

	// 1. The leader is killed while it fetches the first tokens.
	before := rotated.snapshot()
	rotated.awaitSome(t, ctx, "first tokens", authorizers, before, half)
	one.cmd.Process.Signal(syscall.SIGKILL)
	two.waitOutput(t, ctx, "leading")
	three, _ := replica("three")
	three.waitOutput(t, ctx, "standing by")
	rotated.awaitEach(t, ctx, "after the leader's SIGKILL", authorizers, before)
	t.Logf("every authorizer rotated after the SIGKILL by %s", time.Since(began).Round(time.Millisecond))

	// 2. The whole NATS cluster restarts.
	before = rotated.snapshot()
	rotated.awaitSome(t, ctx, "before the NATS restart", authorizers, before, half)
	for _, stop := range stops {
		stop()
	}
	startAll()
	rotated.awaitEach(t, ctx, "after the NATS restart", authorizers, before)
	t.Logf("every authorizer rotated after the NATS restart by %s", time.Since(began).Round(time.Millisecond))

	// 3. A node is lost for good: the one that leads the platform stream.
	before = rotated.snapshot()
	rotated.awaitSome(t, ctx, "before losing a node", authorizers, before, half)
	stopStreamLeader(t, ctx, js, "KV_"+kv.DefaultPlatformBucket, servers, stops)
	rotated.awaitEach(t, ctx, "after losing a node", authorizers, before)
	t.Logf("every authorizer rotated after the node loss by %s", time.Since(began).Round(time.Millisecond))

	// A clean stop stores what is under way; then the bucket is compared
	// with WeChat.
	two.cmd.Process.Signal(syscall.SIGTERM)
	three.cmd.Process.Signal(syscall.SIGTERM)
	two.wait(t, ctx)
	three.wait(t, ctx)

	stale, dead := 0, 0
	for _, id := range authorizers {
		rec, _ := authorizerRecord(t, ctx, platformBucket, id)
		if rec.RefreshToken != fake.RefreshToken(componentApp, id) || !fake.RefreshTokenWorks(componentApp, id, rec.RefreshToken) {
			stale++
		}
		e, err := tokens.Get(ctx, id)
		if err != nil {
			t.Fatalf("%s: no token: %v", id, err)
		}
		if ok, _ := fake.Valid(testenv.Record(t, e).Value); !ok {
			dead++
		}
	}
	order.mu.Lock()
	defer order.mu.Unlock()
	if stale > 0 || dead > 0 || len(order.violations) > 0 {
		t.Errorf("%d authorizers without WeChat's newest refresh token, %d with a dead token, %d refresh tokens replaced by older ones: %s",
			stale, dead, len(order.violations), strings.Join(order.violations[:min(len(order.violations), 5)], "; "))
	}
	for _, p := range []*process{one, two, three} {
		if n := len(refusedRefreshToken.FindAllStringIndex(p.output.String(), -1)); n > 0 {
			t.Errorf("%s: WeChat refused a refresh token %d times", p.name, n)
		}
	}
	total, puts := 0, rotated.snapshot()
	for _, id := range authorizers {
		total += puts[id]
	}
	t.Logf("%d authorizer tokens and %d refresh tokens written in %s (%d answers with a refresh token lost in flight); "+
		"every refresh token is WeChat's newest, every token works", total, order.writes, time.Since(began).Round(time.Second), fake.LostRefreshes())
}
