package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// opsURL waits for the process to say where it serves /metrics, /healthz
// and /readyz (text logs), and returns the base URL.
func (p *process) opsURL(t *testing.T, ctx context.Context) string {
	t.Helper()
	p.waitOutput(t, ctx, "serving /metrics, /healthz and /readyz")
	m := regexp.MustCompile(`serving /metrics, /healthz and /readyz" addr=(\S+)`).FindStringSubmatch(p.output.String())
	if m == nil {
		t.Fatalf("%s: no metrics address in:\n%s", p.name, p.output.String())
	}
	return "http://" + m[1]
}

// httpGet returns the status and body of a GET of url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// awaitReadyz waits until base/readyz answers code, and returns the body.
func awaitReadyz(t *testing.T, ctx context.Context, base string, code int) string {
	t.Helper()
	for {
		got, body := httpGet(t, base+"/readyz")
		if got == code {
			return body
		}
		select {
		case <-ctx.Done():
			t.Fatalf("/readyz never answered %d; last %d %q", code, got, body)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// serveEnv is the environment of a `wxtoken serve` for appA.
func serveEnv(natsURL, wechatURL string, more ...string) []string {
	return append([]string{"NATS_URL=" + natsURL, "WECHAT_BASE_URL=" + wechatURL,
		"WECHAT_APPID=" + appA, "WECHAT_APPSECRET=secret-of-a"}, more...)
}

// TestServeWaitsForALateNATS starts `wxtoken serve` before its NATS
// server. It stays up, not ready, warning at most once per 5s, and fetches
// the first token once the server comes. The client commands still fail at
// once without a server.
func TestServeWaitsForALateNATS(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	opts, err := embedded.Options(fmt.Sprintf("127.0.0.1:%d", freePort(t)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", opts.Port)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")

	started := time.Now()
	p := startWxtoken(t, "serve", serveEnv(natsURL, wechatURL), "serve", "--http-addr", "127.0.0.1:0")
	base := p.opsURL(t, ctx)
	p.waitOutput(t, ctx, "cannot reach NATS; retrying")
	if body := awaitReadyz(t, ctx, base, http.StatusServiceUnavailable); !strings.Contains(body, "NATS") {
		t.Errorf("/readyz without NATS says %q", body)
	}
	// The second warning comes after a pause, counting what it left out.
	p.waitOutputCount(t, ctx, "cannot reach NATS; retrying", 2)
	warnings := strings.Count(p.output.String(), "cannot reach NATS")
	if most := 1 + int(time.Since(started)/(5*time.Second)); warnings > most {
		t.Errorf("%d warnings in %s, want at most %d (one per 5s)", warnings, time.Since(started).Round(time.Millisecond), most)
	}
	if !strings.Contains(p.output.String(), "attempts_since_last_warning=") {
		t.Error("the second warning does not say how many attempts it stands for")
	}

	t.Run("client commands fail at once", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, wxtokenBinary(t), "get", appA)
		cmd.Env = []string{"NATS_URL=" + natsURL}
		out, err := cmd.CombinedOutput()
		if cctx.Err() != nil || err == nil || !strings.Contains(string(out), "cannot connect to NATS") {
			t.Errorf("wxtoken get without NATS: %v, %q", err, out)
		}
	})

	startServer(t, opts)
	came := time.Now()
	p.waitOutput(t, ctx, "token rotated")
	t.Logf("first token %s after NATS came up", time.Since(came).Round(time.Millisecond))
	awaitReadyz(t, ctx, base, http.StatusOK)
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token fetches, want 1", got)
	}
}

// TestReplicasStartTogetherOnAFreshCluster starts two replicas with
// --replicas 3 against a cluster of which only two nodes are up, so that
// no bucket of three replicas can be created yet. Both wait, not ready and
// saying why, and both become ready once the third node joins: one leads,
// one stands by.
func TestReplicasStartTogetherOnAFreshCluster(t *testing.T) {
	ctx := testenv.Context(t, 120*time.Second)
	nodes, urls := clusterOptions(t)
	startServer(t, nodes[0])
	startServer(t, nodes[1])
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")

	var replicas []*process
	var bases []string
	for _, name := range []string{"one", "two"} {
		p := startWxtoken(t, name, serveEnv(urls, wechatURL), "serve", "--replicas", "3", "--instance", name, "--http-addr", "127.0.0.1:0")
		replicas = append(replicas, p)
		bases = append(bases, p.opsURL(t, ctx))
	}
	for i, p := range replicas {
		p.waitOutput(t, ctx, "cannot open the buckets yet; retrying")
		if body := awaitReadyz(t, ctx, bases[i], http.StatusServiceUnavailable); !strings.Contains(body, "retrying") {
			t.Errorf("%s: /readyz says %q", p.name, body)
		}
	}

	startServer(t, nodes[2])
	joined := time.Now()
	for i, p := range replicas {
		awaitReadyz(t, ctx, bases[i], http.StatusOK)
		p.alive(t)
	}
	t.Logf("both replicas ready %s after the third node started", time.Since(joined).Round(time.Millisecond))
	roles := map[string]int{}
	for _, p := range replicas {
		roles[p.waitOutputAny(t, ctx, "became leader", "standing by")]++
	}
	if roles["became leader"] != 1 || roles["standing by"] != 1 {
		t.Errorf("want one leader and one standby, have %v", roles)
	}
	nc := testenv.Connect(t, urls)
	e := testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA))
	if ok, code := fake.Valid(testenv.Record(t, e).Value); !ok {
		t.Errorf("the stored token is rejected with %d", code)
	}
	js, _ := jetstream.New(nc)
	for _, name := range []string{kv.DefaultBucket, kv.DefaultBucket + "_leader"} {
		s, err := js.Stream(ctx, "KV_"+name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("%s has %d replicas, want 3", name, r)
		}
	}
}

// TestServeStopsOnWhatRetryingCannotFix: errors that no retry can mend end
// `wxtoken serve` at once, exit status 1, with a line that says what to do.
func TestServeStopsOnWhatRetryingCannotFix(t *testing.T) {
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, ctx context.Context) (natsURL string, env []string)
		args  []string
		want  string
	}{
		{
			name: "a bucket whose storage cannot change",
			setup: func(t *testing.T, ctx context.Context) (string, []string) {
				srv := testenv.NATS(t)
				js, _ := jetstream.New(testenv.Connect(t, srv.ClientURL()))
				if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.MemoryStorage}); err != nil {
					t.Fatal(err)
				}
				return srv.ClientURL(), nil
			},
			want: "delete the bucket",
		},
		{
			name: "three replicas on a single server",
			setup: func(t *testing.T, ctx context.Context) (string, []string) {
				return testenv.NATS(t).ClientURL(), nil
			},
			args: []string{"--replicas", "3"},
			want: "needs a NATS cluster",
		},
		{
			name: "a NATS user that may not manage buckets",
			setup: func(t *testing.T, ctx context.Context) (string, []string) {
				srv := rolesServer(t)
				return srv.ClientURL(), []string{"NATS_USER=service", "NATS_PASSWORD=" + passwords["service"]}
			},
			want: "may not do what the refresher needs",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testenv.Context(t, 30*time.Second)
			natsURL, env := tc.setup(t, ctx)
			p := startWxtoken(t, "serve", serveEnv(natsURL, wechatURL, env...), append([]string{"serve"}, tc.args...)...)
			if code := p.wait(t, ctx); code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			last := strings.TrimSpace(p.output.String())
			last = last[strings.LastIndex(last, "\n")+1:]
			if !strings.HasPrefix(last, "wxtoken serve: ") || !strings.Contains(last, tc.want) {
				t.Errorf("last line %q, want the error with %q", last, tc.want)
			}
			t.Log(last)
		})
	}
}
