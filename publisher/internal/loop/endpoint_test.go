package loop

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// TestRequestNamingARevisionARotationStoredWaitsForIt: a rotation stores
// revision 2, and services can name it stale (having read the bucket, or
// seen 2 rejected at once) before the rotation lands. That request must
// neither be refused as naming a revision from the future, nor be answered
// by the very rotation that made 2: it is decided again once that lands.
func TestRequestNamingARevisionARotationStoredWaitsForIt(t *testing.T) {
	r := unreachableLoop(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tm := &term{ctx: ctx, work: ctx, onPanic: r.logPanic, lease: &fakeLease{left: time.Hour}}
	now := time.Now()
	first, second := kv.NewCredential("wx1", "token-1", 2*time.Hour, now), kv.NewCredential("wx1", "token-2", 2*time.Hour, now)
	stale := uint64(2)
	request := kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale})

	a := r.credential("wx1")
	for _, observed := range []bool{false, true} { // the refresher's watch saw 2 already, or not
		rotation := &flight{from: 1, done: make(chan struct{})}
		a.mu.Lock()
		a.st.rev, a.st.rec, a.flight, a.st.lastForced = 1, &first, rotation, now
		if observed {
			a.st.rev, a.st.rec = 2, &second
		}
		a.mu.Unlock()

		ad := r.admit(tm, "wx1", request)
		if !ad.behind || ad.f != rotation {
			t.Fatalf("observed %v: admitted %+v, want to wait for the rotation under way", observed, ad)
		}
		answered := make(chan kv.RefreshReply)
		go func() {
			reply, _ := r.await(tm, "wx1", request, ad)
			answered <- reply
		}()
		// The rotation lands with revision 2. The request is decided
		// again: a forced refresh ran just now, so it is rate limited,
		// not answered with revision 2 as if 2 replaced itself.
		a.mu.Lock()
		a.st.rev, a.st.rec, a.flight = 2, &second, nil
		a.mu.Unlock()
		rotation.out = outcome{rev: 2, rec: &second, refreshed: true}
		close(rotation.done)
		reply := <-answered
		if reply.Error == nil || reply.Error.Code != kv.CodeRateLimited || reply.Revision != 2 {
			t.Errorf("observed %v: reply %+v, want rate_limited at revision 2", observed, reply)
		}
	}
}

// TestRateLimitedSaysHowLongAgoWithoutRoundingUpToTheLimit: a forced
// refresh 4.6s ago, at most one per 5s: the answer must not say "ran 5s
// ago; at most one per 5s", which reads as a refusal that should not be.
func TestRateLimitedSaysHowLongAgoWithoutRoundingUpToTheLimit(t *testing.T) {
	now := time.Now()
	r := unreachableLoop(t, func(cfg *Config) {
		cfg.MinForceInterval = 5 * time.Second
		cfg.Now = func() time.Time { return now }
	})
	tm := &term{ctx: t.Context(), work: t.Context(), onPanic: r.logPanic, lease: &fakeLease{left: time.Hour}}
	held := kv.NewCredential("wx1", "token-1", 2*time.Hour, now)
	a := r.credential("wx1")
	a.mu.Lock()
	a.st.rev, a.st.rec, a.st.lastForced = 7, &held, now.Add(-4600*time.Millisecond)
	a.mu.Unlock()
	stale := uint64(7)
	ad := r.admit(tm, "wx1", kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale}))
	if ad.f != nil || ad.reply.Error == nil || ad.reply.Error.Code != kv.CodeRateLimited {
		t.Fatalf("admitted %+v, want rate_limited at once", ad)
	}
	if want := "ran 4.6s ago; at most one per 5s"; !strings.Contains(ad.reply.Error.Message, want) {
		t.Errorf("message %q, want it to say %q", ad.reply.Error.Message, want)
	}
}

// unreachableLoop is the loop of wx1, an app of the test kind whose
// WeChat is out of reach, with its configuration changed by change.
func unreachableLoop(t *testing.T, change func(*Config)) *Credentials {
	t.Helper()
	nc, js := natstest.JetStream(t)
	c := New(testConfig(nc, js, change))
	c.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Source: newTestKind(t, "http://127.0.0.1:1", "wx1", "a-secret-of-some-length")}})
	return c
}

// TestEndpointMetadataNamesAFileTheRepositoryHas: `nats micro info
// wxtoken` says where the refresh endpoint's contract is written: a
// section of a file this repository has.
func TestEndpointMetadataNamesAFileTheRepositoryHas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := newTestLeader(t, ctx, fakewechat.Config{}, nil)
	leader.lead(t, ctx, leader.bucket)
	leader.refresh(t, ctx, nil) // the endpoint is served
	subject, err := micro.ControlSubject(micro.InfoVerb, kv.ServiceName, "")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := leader.nc.RequestWithContext(ctx, subject, nil)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil || len(info.Endpoints) != 1 {
		t.Fatalf("micro info %s: %v", msg.Data, err)
	}
	contract := info.Endpoints[0].Metadata["contract"]
	file, anchor, _ := strings.Cut(contract, "#")
	text, err := os.ReadFile(filepath.Join(moduleRoot(t), file))
	if err != nil {
		t.Fatalf("the endpoint's contract is %q: %v", contract, err)
	}
	heading := regexp.MustCompile(`(?m)^#+ (.+)$`)
	for _, h := range heading.FindAllSubmatch(text, -1) {
		if strings.ReplaceAll(strings.ToLower(string(h[1])), " ", "-") == anchor {
			return
		}
	}
	t.Errorf("the endpoint's contract is %q: %s has no section #%s", contract, file, anchor)
}

// moduleRoot returns the directory of the module's go.mod, above the test's.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// TestRenewAfterARefusedSecretLetsAForcedRefreshGoAtOnce: a forced
// refresh that WeChat refused for the secret (40125) rotated nothing;
// once a new secret renews the credential, the service's next forced
// refresh goes at once instead of being rate_limited. Without that
// refusal, renewing keeps the least interval.
func TestRenewAfterARefusedSecretLetsAForcedRefreshGoAtOnce(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		lastErr error
		forced  bool
	}{
		{"refused for the secret", &upstream.Error{ErrCode: 40125, Class: upstream.ClassConfig}, true},
		{"no refusal", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := unreachableLoop(t, func(cfg *Config) {
				cfg.MinForceInterval = time.Hour
				cfg.Now = func() time.Time { return now }
			})
			held := kv.NewCredential("wx1", "token-1", 2*time.Hour, now)
			a := r.credential("wx1")
			a.mu.Lock()
			a.st.rev, a.st.rec, a.st.lastForced = 7, &held, now.Add(-time.Second)
			a.mu.Unlock()
			if tc.lastErr != nil {
				a.pause(now.Add(time.Hour), tc.lastErr)
			}
			r.Replace([]Desc{{Key: "wx1", Kind: kv.KindToken, Renewed: true,
				Source: newTestKind(t, "http://127.0.0.1:1", "wx1", "the-new-secret-of-some-length")}})
			stale := uint64(7)
			ad := a.admit(&stale, now, time.Hour, func(*flight, outcome, mode, string) bool { return true })
			if ad.forced != tc.forced || (!tc.forced && ad.verdict != rateLimitedVerdict) {
				t.Fatalf("forced %v, verdict %v; want forced %v (else rate_limited)", ad.forced, ad.verdict, tc.forced)
			}
		})
	}
}
