package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestFirstDomainDownForAMinuteWhile200AppsRotate: `wxtoken serve` with
// 200 apps whose tokens live 30 s (so each rotates about four times in the
// outage), on two WeChat domains over one WeChat. The first
// (api.weixin.qq.com) hangs every call for 60 s. The refresher warns and
// moves to the second, every token a service holds keeps working
// throughout, no token is fetched twice for one rotation (at the fake,
// the tokens issued to each app are exactly the values the bucket held),
// and once the first domain answers again the refresher goes back to it
// (the info line, then /metrics says so, and the first domain gets the
// calls).
func TestFirstDomainDownForAMinuteWhile200AppsRotate(t *testing.T) {
	const (
		apps     = 200
		lifetime = 30 * time.Second
		outage   = 60 * time.Second
	)
	ctx := testenv.Context(t, outage+90*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake := fakewechat.New(fakewechat.Config{ExpiresIn: lifetime})
	first, second := serveDomain(t, fake), serveDomain(t, fake)

	appids := make([]string, apps)
	var file strings.Builder
	file.WriteString("apps:\n")
	for i := range appids {
		appids[i] = fmt.Sprintf("wxd%015x", i)
		fake.AddApp(appids[i], "secret-of-"+appids[i])
		fmt.Fprintf(&file, "  - appid: %s\n    secret: secret-of-%s\n", appids[i], appids[i])
	}
	appsFile := filepath.Join(t.TempDir(), "apps.yaml")
	if err := os.WriteFile(appsFile, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startWxtoken(t, "serve", nil, "serve", "--nats-url", srv.ClientURL(), "--apps", appsFile,
		"--wechat-base-url", first.URL+","+second.URL, "--wechat-base-recheck", "3s",
		"--upstream-timeout", "1s", "--upstream-rate", "200", "--schedule", "@every 1s", "--http-addr", "127.0.0.1:0")
	held := followBucket(t, ctx, testenv.Bucket(t, ctx, nc))
	held.await(t, ctx, "every app's first token", func(h *heldTokens) bool { return len(h.values) == apps })

	first.Fail(fakewechat.Hang)
	outageOver := time.After(outage)
	samples := time.NewTicker(500 * time.Millisecond)
	defer samples.Stop()
	n, dead := 0, 0
	for running := true; running; {
		select {
		case <-samples.C:
			n++
			for _, id := range appids {
				if token := held.last(id); !valid(fake, token) {
					dead++
					_, code := fake.Valid(token)
					t.Errorf("sample %d: the token of %s in the bucket does not work: errcode %d", n, id, code)
				}
			}
		case <-outageOver:
			running = false
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	p.alive(t)
	if !strings.Contains(p.output.String(), "calls go to the next base") {
		t.Fatalf("no warning of the move to the second domain:\n%s", p.output.String())
	}
	rotatedDuringOutage := second.Answered()
	if err := first.Heal(); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, ctx, "first API base answers again: calls go back to it")
	answeredBack := first.Answered()
	// Two dozen rotations later, the first domain has had at least half
	// their calls (some may have left for the second before the return).
	rotations := held.rotations()
	held.await(t, ctx, "two dozen rotations after the return", func(h *heldTokens) bool { return h.count >= rotations+24 })
	if first.Answered() < answeredBack+12 {
		t.Errorf("the first domain answered %d calls in the last two dozen rotations, want 12 or more", first.Answered()-answeredBack)
	}

	metrics := scrapeMetrics(t, p)
	for series, want := range map[string]float64{
		`wxtoken_upstream_base_current{base="` + first.URL + `"}`:         1,
		`wxtoken_upstream_base_current{base="` + second.URL + `"}`:        0,
		`wxtoken_upstream_base_up{base="` + first.URL + `"}`:              1,
		`wxtoken_upstream_base_up{base="` + second.URL + `"}`:             1,
		`wxtoken_upstream_base_failures_total{base="` + second.URL + `"}`: 0,
	} {
		if got := metricValue(t, metrics, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	failures := metricValue(t, metrics, `wxtoken_upstream_base_failures_total{base="`+first.URL+`"}`)
	if failures < 2 || failures != float64(first.Failed()) {
		t.Errorf("wxtoken_upstream_base_failures_total of the first domain = %v, want the %d calls it hung (2 or more)", failures, first.Failed())
	}

	// Every token issued was a value the bucket held: none was fetched
	// twice for one rotation, nor fetched and lost.
	for _, id := range appids {
		held.await(t, ctx, "the bucket to hold "+id+"'s newest token", func(h *heldTokens) bool {
			issued, current := fake.IssuedAndCurrent(id)
			values := h.values[id]
			if values[len(values)-1] != current {
				return false // a rotation under way: wait for its value
			}
			if issued != len(values) {
				t.Errorf("%s: %d tokens issued at WeChat, %d values in the bucket", id, issued, len(values))
			}
			return true
		})
	}
	t.Logf("%d rotations in all, %d during the outage on the second domain; %d samples of %d tokens, %d dead; the first domain hung %d calls",
		held.rotations(), rotatedDuringOutage, n, apps, dead, first.Failed())
	if rotatedDuringOutage < apps*2 {
		t.Errorf("the second domain answered %d calls during the outage, want at least %d (two rotations of each app)", rotatedDuringOutage, apps*2)
	}
}

func serveDomain(t *testing.T, fake *fakewechat.Server) *fakewechat.Domain {
	t.Helper()
	d, err := fake.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// scrapeMetrics reads /metrics of a `wxtoken serve` started with
// --http-addr.
func scrapeMetrics(t *testing.T, p *process) string {
	t.Helper()
	addr := regexp.MustCompile(`msg="serving /metrics, /healthz and /readyz" addr=(\S+)`).FindStringSubmatch(p.output.String())
	if addr == nil {
		t.Fatalf("no metrics address in:\n%s", p.output.String())
	}
	code, body := httpGet(t, "http://"+addr[1]+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	return body
}

// heldTokens are the values a service following the bucket has held, by
// key, in order.
type heldTokens struct {
	mu      sync.Mutex
	values  map[string][]string
	count   int           // puts seen
	changed chan struct{} // closed and replaced at every put
}

// followBucket follows every key of b from the start until cleanup.
func followBucket(t *testing.T, ctx context.Context, b jetstream.KeyValue) *heldTokens {
	t.Helper()
	h := &heldTokens{values: map[string][]string{}, changed: make(chan struct{})}
	w, err := b.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		w.Stop()
		<-done
	})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut || kv.ValidateKey(e.Key()) != nil {
				continue // a ledger, or a key of no credential
			}
			rec, err := kv.DecodeCredential(e.Key(), e.Value())
			if err != nil {
				t.Errorf("revision %d: %v", e.Revision(), err)
				continue
			}
			h.mu.Lock()
			if v := h.values[e.Key()]; len(v) == 0 || v[len(v)-1] != rec.Value {
				h.values[e.Key()] = append(v, rec.Value)
			}
			h.count++
			close(h.changed)
			h.changed = make(chan struct{})
			h.mu.Unlock()
		}
	}()
	return h
}

// await waits until done holds of what is held, called under its lock.
func (h *heldTokens) await(t *testing.T, ctx context.Context, what string, done func(*heldTokens) bool) {
	t.Helper()
	for {
		h.mu.Lock()
		ok, changed := done(h), h.changed
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("waited in vain for %s", what)
		}
	}
}

func (h *heldTokens) last(key string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.values[key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func (h *heldTokens) rotations() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}
