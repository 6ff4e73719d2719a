package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// agentSystemOptions shapes the system startAgentSystem starts. Zero
// fields take the values noted.
type agentSystemOptions struct {
	// AppIDs are the apps the refresher serves, each with the tickets in
	// Tickets; [appA].
	AppIDs []string
	// Tickets are the JS-SDK tickets kept beside each app's token, as the
	// apps file's tickets: ["jsapi"]. A non-nil empty slice keeps none.
	Tickets []string
	// WeChat configures the fake. ExpiresIn defaults to 16s here, so that
	// the refresher replaces a token every 6 to 8 seconds.
	WeChat fakewechat.Config
	// RefreshBefore is the refresher's --refresh-before; half of
	// WeChat.ExpiresIn.
	RefreshBefore time.Duration
	// RefresherEnv and AgentArgs are added to the refresher's environment
	// and to the agent's command line (after --nats-url, --listen and
	// --wechat-base-url, which they may override).
	RefresherEnv []string
	AgentArgs    []string
}

// agentSystem is an embedded NATS server, a fake WeChat, a refresher
// (`wxtoken serve`) and an agent (`wxtoken agent`), the two as processes.
type agentSystem struct {
	URL       string // the agent's base URL, http://127.0.0.1:PORT
	Fake      *fakewechat.Server
	WeChatURL string   // the fake's base URL
	AppID     string   // AppIDs[0]
	AppIDs    []string // the apps served
	Keys      []string // every key the refresher keeps: the apps and their tickets
	NATSURL   string
	NC        *nats.Conn         // the test's own connection
	Bucket    jetstream.KeyValue // the token bucket
	Refresher *process
	Agent     *process

	tokens *revisionLog // every revision of every app's token key
}

// startAgentSystem starts the system and returns once the agent answers
// GET /readyz with 200: it holds a value of every key.
func startAgentSystem(t *testing.T, opts agentSystemOptions) *agentSystem {
	t.Helper()
	ctx := testenv.Context(t, 60*time.Second) // start-up only
	sys := startAgentRefresher(t, ctx, opts)
	sys.startAgent(t, ctx, opts.AgentArgs...)
	return sys
}

// startAgentRefresher starts NATS, the fake and the refresher, and returns
// once every key has its first value; the agent is not started.
func startAgentRefresher(t *testing.T, ctx context.Context, opts agentSystemOptions) *agentSystem {
	t.Helper()
	if len(opts.AppIDs) == 0 {
		opts.AppIDs = []string{appA}
	}
	if opts.Tickets == nil {
		opts.Tickets = []string{"jsapi"}
	}
	if opts.WeChat.ExpiresIn == 0 {
		opts.WeChat.ExpiresIn = 16 * time.Second
	}
	if opts.RefreshBefore == 0 {
		opts.RefreshBefore = opts.WeChat.ExpiresIn / 2
	}
	srv := testenv.NATS(t)
	fake, wechatURL := testenv.WeChat(t, opts.WeChat)

	var apps strings.Builder
	apps.WriteString("apps:\n")
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + wechatURL,
		"WXTOKEN_REFRESH_BEFORE=" + opts.RefreshBefore.String(), "WXTOKEN_SCHEDULE=@every 1s",
		"WXTOKEN_MIN_FORCE_INTERVAL=1ms", "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s"}
	var keys []string
	for i, appid := range opts.AppIDs {
		secret := "secret-of-" + appid
		fake.AddApp(appid, secret)
		fmt.Fprintf(&apps, "  - appid: %s\n    secret_env: SECRET_%d\n", appid, i)
		if len(opts.Tickets) > 0 {
			fmt.Fprintf(&apps, "    tickets: [%s]\n", strings.Join(opts.Tickets, ", "))
		}
		env = append(env, fmt.Sprintf("SECRET_%d=%s", i, secret))
		keys = append(keys, appid)
		for _, ticket := range opts.Tickets {
			keys = append(keys, kv.Key(appid, ticket+"_ticket"))
		}
	}
	appsFile := filepath.Join(t.TempDir(), "apps.yaml")
	writeFile(t, appsFile, apps.String())
	env = append(env, "WXTOKEN_APPS="+appsFile)
	env = append(env, opts.RefresherEnv...)

	sys := &agentSystem{Fake: fake, WeChatURL: wechatURL, AppID: opts.AppIDs[0], AppIDs: opts.AppIDs,
		Keys: keys, NATSURL: srv.ClientURL(), NC: testenv.Connect(t, srv.ClientURL())}
	sys.Refresher = startWxtoken(t, "refresher", env, "serve", "--instance", "refresher")
	sys.Bucket = testenv.Bucket(t, ctx, sys.NC)
	sys.tokens = followTokens(t, sys.Bucket, opts.AppIDs)
	for _, key := range keys {
		testenv.Next(t, ctx, testenv.Entries(t, sys.Bucket, key))
	}
	return sys
}

// startAgent runs `wxtoken agent` against the system, waits for its
// address in its log and then for GET /readyz to answer 200.
func (sys *agentSystem) startAgent(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	args = append([]string{"agent", "--nats-url", sys.NATSURL, "--listen", "127.0.0.1:0",
		"--wechat-base-url", sys.WeChatURL}, args...)
	sys.Agent = startWxtoken(t, "agent", nil, args...)
	sys.Agent.waitOutput(t, ctx, "agent listening")
	addr := listenAddr(t, sys.Agent.output.String())
	sys.URL = "http://" + addr
	awaitReady(t, ctx, sys.Agent, sys.URL+"/readyz")
}

var listenAddrPattern = regexp.MustCompile(`addr="?([^\s"]+)"?`)

// listenAddr returns the addr= of the agent's "agent listening" line.
func listenAddr(t testing.TB, output string) string {
	t.Helper()
	for line := range strings.Lines(output) {
		if !strings.Contains(line, "agent listening") {
			continue
		}
		m := listenAddrPattern.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no addr= in the agent's line %q", line)
		}
		if strings.HasSuffix(m[1], ":0") {
			t.Fatalf("the agent logged the address it was given, %s, not the one it listens on: %q", m[1], line)
		}
		return m[1]
	}
	t.Fatalf("no \"agent listening\" line in:\n%s", output)
	return ""
}

// awaitReady polls url until it answers 200, failing the test if the
// process exits or ctx ends first.
func awaitReady(t *testing.T, ctx context.Context, p *process, url string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		p.alive(t)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %q", resp.Status, body)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never answered 200; last: %s", url, last)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM to the agent and then to the refresher and checks
// that each exits 0. After it, the fake has seen every token request the
// system made.
func (sys *agentSystem) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, p := range []*process{sys.Agent, sys.Refresher} {
		if p == nil {
			continue
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM to %s: %v", p.name, err)
		}
		if code := p.wait(t, ctx); code != 0 {
			t.Errorf("%s: exit status %d after SIGTERM, want 0\n%s", p.name, code, p.output.String())
		}
	}
}

// token returns the value of appid's token at revision rev, waiting until
// the test has seen that revision.
func (sys *agentSystem) token(t testing.TB, ctx context.Context, appid string, rev uint64) string {
	t.Helper()
	return sys.tokens.await(t, ctx, appid, rev).Value
}

// records returns every token record of appid the bucket has held, by
// revision, once the test has seen the bucket's latest revision of appid.
func (sys *agentSystem) records(t testing.TB, ctx context.Context, appid string) map[uint64]kv.Credential {
	t.Helper()
	e, err := sys.Bucket.Get(ctx, appid)
	if err != nil {
		t.Fatalf("%s: %v", appid, err)
	}
	sys.tokens.await(t, ctx, appid, e.Revision())
	return sys.tokens.snapshot(appid)
}

// revisionLog keeps every token record the bucket held, by appid and
// revision, from the first.
type revisionLog struct {
	mu      sync.Mutex
	records map[string]map[uint64]kv.Credential
	changed chan struct{} // closed and replaced at each record
}

func followTokens(t testing.TB, bucket jetstream.KeyValue, appids []string) *revisionLog {
	t.Helper()
	l := &revisionLog{records: map[string]map[uint64]kv.Credential{}, changed: make(chan struct{})}
	for _, appid := range appids {
		l.records[appid] = map[uint64]kv.Credential{}
		testenv.Follow(t, &kvwatch.Follower{Bucket: bucket, Key: appid, OnEntry: func(e jetstream.KeyValueEntry) {
			if e.Operation() != jetstream.KeyValuePut {
				return
			}
			rec, err := kv.DecodeCredential(appid, e.Value())
			if err != nil {
				return // a record that does not decode holds no token a test could revoke
			}
			l.mu.Lock()
			l.records[appid][e.Revision()] = rec
			close(l.changed)
			l.changed = make(chan struct{})
			l.mu.Unlock()
		}})
	}
	return l
}

func (l *revisionLog) await(t testing.TB, ctx context.Context, appid string, rev uint64) kv.Credential {
	t.Helper()
	for {
		l.mu.Lock()
		rec, ok := l.records[appid][rev]
		changed := l.changed
		l.mu.Unlock()
		if ok {
			return rec
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("revision %d of %s never appeared in the bucket", rev, appid)
		}
	}
}

func (l *revisionLog) snapshot(appid string) map[uint64]kv.Credential {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uint64]kv.Credential, len(l.records[appid]))
	for rev, rec := range l.records[appid] {
		out[rev] = rec
	}
	return out
}
