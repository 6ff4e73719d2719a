package test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// runWxtoken runs a client command to its end.
func runWxtoken(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(wxtokenBinary(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

func TestClientCommands(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSystem(t, fakewechat.Config{Overlap: -1}, publisher.Config{Instance: "replica-1", MinForceInterval: time.Nanosecond})
	nc, fake := sys.nc, sys.fake
	e := leading(t, ctx, sys)
	env := []string{"NATS_URL=" + sys.url}

	t.Run("get prints the token and nothing else", func(t *testing.T) {
		out, errOut, code := runWxtoken(t, env, "get", appA)
		if code != 0 || out != fake.Current(appA)+"\n" || errOut != "" {
			t.Errorf("exit %d, stdout %.20q..., stderr %q", code, out, errOut)
		}
	})
	t.Run("status", func(t *testing.T) {
		out, _, code := runWxtoken(t, env, "status")
		// fetched_at is cut to the second, and the time left is rounded
		// to one: within half a second of that second it shows as 2h0m0s.
		row := regexp.MustCompile(appA + `\s+access_token\s+token\s+` + strconv.FormatUint(e.Revision(), 10) + `\s+\S+\s+(1h59m\S+|2h0m0s)\s+initial\s+replica-1`)
		if code != 0 || !strings.Contains(out, "KEY") || !row.MatchString(out) {
			t.Errorf("exit %d:\n%s", code, out)
		}
		out, _, code = runWxtoken(t, env, "status", "--json")
		var status struct {
			Leader kv.LeaseHolder `json:"leader"`
			Tokens []struct {
				AppID    string `json:"appid"`
				Revision uint64 `json:"revision"`
				Reason   string `json:"reason"`
			} `json:"tokens"`
		}
		if err := json.Unmarshal([]byte(out), &status); err != nil || code != 0 {
			t.Fatalf("exit %d, %v:\n%s", code, err, out)
		}
		if status.Leader.Instance != "replica-1" || len(status.Tokens) != 1 || status.Tokens[0].AppID != appA || status.Tokens[0].Reason != kv.ReasonInitial {
			t.Errorf("status %+v", status)
		}
	})
	t.Run("refresh reports what the refresher did, and why not", func(t *testing.T) {
		out, _, code := runWxtoken(t, env, "refresh", appA)
		if code != 0 || !strings.HasPrefix(out, appA+": not refreshed: the current value is valid and no revision was named as rejected (--force names the current one)") {
			t.Errorf("exit %d: %s", code, out)
		}
		out, _, code = runWxtoken(t, env, "refresh", appA, "--force")
		if code != 0 || !strings.HasPrefix(out, appA+": not refreshed: WeChat still accepts this token (the refresher asked it with getcallbackip), so it stays;") {
			t.Errorf("--force of a token WeChat accepts: exit %d: %s", code, out)
		}
		fake.Issue(appA)
		out, _, code = runWxtoken(t, env, "refresh", appA, "--force")
		if code != 0 || !strings.HasPrefix(out, appA+": refreshed; revision") {
			t.Errorf("--force: exit %d: %s", code, out)
		}
		old := strconv.FormatUint(e.Revision(), 10)
		out, _, code = runWxtoken(t, env, "refresh", appA, "--stale-revision", old)
		if code != 0 || !strings.HasPrefix(out, appA+": not refreshed: revision "+old+" was already replaced by a newer one;") {
			t.Errorf("--stale-revision of a replaced token: exit %d: %s", code, out)
		}
	})
	t.Run("watch streams rotations", func(t *testing.T) {
		watcher := startWxtoken(t, "watch", env, "watch", appA)
		watcher.waitOutput(t, ctx, "watching")
		fake.Issue(appA)
		if _, _, code := runWxtoken(t, env, "refresh", appA, "--force"); code != 0 {
			t.Fatal("refresh failed")
		}
		watcher.waitOutput(t, ctx, "rotated revision=")
		if !regexp.MustCompile(appA + ` rotated revision=\d+ reason=requested expires_at=`).MatchString(watcher.output.String()) {
			t.Errorf("watch printed:\n%s", watcher.output.String())
		}
		failure, _ := json.Marshal(kv.FailureEvent{AppID: appA, ErrCode: 40164, ErrMsg: "invalid ip", Class: "config", NextAttempt: time.Now()})
		if err := nc.Publish(kv.Subjects{}.Failed(appA), failure); err != nil {
			t.Fatal(err)
		}
		// fake.Issue above was another party's fetch: the refresher may
		// say so first (class invalidated_elsewhere), so wait for this one.
		watcher.waitOutput(t, ctx, "FAILED errcode=40164")
		if !strings.Contains(watcher.output.String(), appA+` FAILED errcode=40164 class=config next_attempt=`) {
			t.Errorf("watch printed:\n%s", watcher.output.String())
		}
		removal, _ := json.Marshal(kv.RemovalEvent{AppID: appA, Revision: 42, Reason: kv.RemovedUnauthorized, RemovedAt: time.Now()})
		if err := nc.Publish(kv.Subjects{}.Removed(appA), removal); err != nil {
			t.Fatal(err)
		}
		watcher.waitOutput(t, ctx, "REMOVED")
		if !strings.Contains(watcher.output.String(), appA+` REMOVED revision=42 reason=unauthorized`) {
			t.Errorf("watch printed:\n%s", watcher.output.String())
		}
		watcher.cmd.Process.Signal(syscall.SIGINT)
		if code := watcher.wait(t, ctx); code != 0 {
			t.Errorf("watch exited %d after SIGINT", code)
		}
	})
	t.Run("errors are one line and a non-zero status", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		nowhere := "nats://" + ln.Addr().String()
		ln.Close()
		for _, tc := range []struct {
			args  []string
			env   []string
			code  int
			inErr string
		}{
			{[]string{"get", "wxunknown000000000"}, env, 1, "no value for wxunknown000000000"},
			{[]string{"refresh", "wxunknown000000000"}, env, 1, "unknown_app"},
			{[]string{"status"}, []string{"NATS_URL=" + nowhere}, 1, "cannot connect to NATS"},
			{[]string{"get", appA}, []string{"NATS_URL=" + nowhere}, 1, "cannot connect to NATS"},
			{[]string{"get"}, env, 2, "need exactly one KEY"},
			{[]string{"get", "wx.bad"}, env, 2, "not a credential kind"},
			{[]string{"get", "wx bad"}, env, 2, "appid"},
			{[]string{"sign", appA, "/relative"}, env, 2, "http(s) URL"},
			{[]string{"sign", appA + ".wx_card_ticket", "https://example.com/"}, env, 2, "signed with the jsapi_ticket"},
			{[]string{"sign", appA, "https://example.com/"}, env, 1, "no value for " + appA + ".jsapi_ticket"},
			{[]string{"status", "--no-such-flag"}, env, 2, "no-such-flag"},
			{[]string{"frobnicate"}, env, 2, "unknown command"},
			{[]string{"serve", "--log-format", "yaml"}, env, 2, "--log-format"},
			{[]string{"serve", "--demo", "--lease-ttl", "500ms", "--upstream-timeout", "10s"}, nil, 2, "lease-ttl 500ms is shorter than 1s; upstream-timeout"},
			{[]string{"serve", "--demo", "--history", "100"}, nil, 2, "history 100"},
			{[]string{"serve", "--demo", "--upstream-rate", "NaN"}, nil, 2, "upstream rate NaN"},
			{[]string{"serve", "--demo", "--schedule", "whenever"}, nil, 2, "schedule"},
			{[]string{"serve", "--demo", "--subject-prefix", "a.*"}, nil, 2, "subject prefix"},
			{[]string{"serve", "--data-dir", "/tmp/x"}, env, 2, "--data-dir is for the embedded NATS server"},
			{[]string{"serve", "--demo", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:-1", "--http-addr", "9090"}, nil, 2, `--http-addr "9090": write host:port`},
			{[]string{"serve", "--demo", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:-1", "--upstream-rate", "0"}, nil, 2, "--upstream-rate 0: give at least 0.01"},
			{[]string{"serve", "--apps", "/nonexistent/apps.yaml"}, nil, 2, "apps file: open /nonexistent/apps.yaml"},
			{[]string{"get", appA}, []string{"NATS_URL=http://" + ln.Addr().String()}, 2, "http:// is not NATS"},
			{[]string{"refresh", appA, "--stale-revision", "-5"}, env, 2, "negative"},
			{[]string{"get", appA, "--subject-prefix", "x"}, env, 2, "not defined: -subject-prefix"},
		} {
			_, errOut, code := runWxtoken(t, tc.env, tc.args...)
			firstLine, _, _ := strings.Cut(errOut, "\n")
			if code != tc.code || !strings.Contains(firstLine, tc.inErr) {
				t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.inErr)
			}
			if strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Errorf("%v: more than one line: %q", tc.args, errOut)
			}
		}
	})
	t.Run("watch says so when NATS goes away", func(t *testing.T) {
		own := testenv.NATS(t)
		watcher := startWxtoken(t, "watch", []string{"NATS_URL=" + own.ClientURL()}, "watch")
		watcher.waitOutput(t, ctx, "watching")
		own.Shutdown()
		if code := watcher.wait(t, ctx); code != 1 {
			t.Errorf("watch exited %d after NATS went away, want 1", code)
		}
		if !strings.Contains(watcher.output.String(), "connection to NATS lost") {
			t.Errorf("watch printed:\n%s", watcher.output.String())
		}
	})
	t.Run("every command explains itself", func(t *testing.T) {
		for _, cmd := range []string{"serve", "get", "watch", "refresh", "status", "authorizers import", "authorizers list"} {
			out, _, code := runWxtoken(t, nil, append(strings.Fields(cmd), "--help")...)
			if code != 0 || !strings.Contains(out, "Usage: wxtoken "+cmd) || !strings.Contains(out, "Examples:") || !strings.Contains(out, "--nats-url") {
				t.Errorf("%s --help: exit %d:\n%s", cmd, code, out)
			}
		}
		out, _, code := runWxtoken(t, nil, "--help")
		if code != 0 || !strings.Contains(out, "wxtoken serve") {
			t.Errorf("--help: exit %d: %s", code, out)
		}
	})
}

// TestServeMetricsHealthAndLogs runs `wxtoken serve` as a process with
// --http-addr and JSON logs: health answers, readiness follows NATS, the
// metrics move with what happens, and each rotation is one log line.
func TestServeMetricsHealthAndLogs(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	fake.AddApp(appA, "s3cr3t-of-a")
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA, "WECHAT_APPSECRET=s3cr3t-of-a",
		"WXTOKEN_MIN_FORCE_INTERVAL=1ms"}
	p := startWxtoken(t, "serve", env, "serve", "--http-addr", "127.0.0.1:0", "--log-format", "json", "--instance", "m1")
	p.waitOutput(t, ctx, `"msg":"token rotated"`)
	addr := regexp.MustCompile(`"msg":"serving /metrics, /healthz and /readyz","addr":"([^"]+)"`).FindStringSubmatch(p.output.String())
	if addr == nil {
		t.Fatalf("no metrics address in:\n%s", p.output.String())
	}
	base := "http://" + addr[1]
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	rev := awaitEndpoint(t, ctx, nc, appA).Revision
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz while leading: %d %s", code, body)
	}
	_, before := get("/metrics")
	for _, want := range []string{
		`wxtoken_leader 1`,
		`wxtoken_upstream_requests_total{api="token",appid="` + appA + `",result="ok"} 1`,
		`wxtoken_rotations_total{appid="` + appA + `",kind="access_token",reason="initial"} 1`,
		`wxtoken_upstream_request_duration_seconds_count{api="token"} 1`,
		`wxtoken_token_fetched_timestamp_seconds{appid="` + appA + `",kind="access_token"}`,
	} {
		if !strings.Contains(before, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if v := metricValue(t, before, `wxtoken_token_expires_in_seconds{appid="`+appA+`",kind="access_token"}`); v < 7000 || v > 7200 {
		t.Errorf("expires in %v s", v)
	}

	// A forced refresh moves the counters.
	fake.Issue(appA)
	if r := request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: &rev}); !r.Refreshed {
		t.Fatalf("refresh: %+v", r)
	}
	request(t, ctx, nc, appA, kv.RefreshRequest{StaleRevision: &rev})
	_, after := get("/metrics")
	for _, want := range []string{
		`wxtoken_upstream_requests_total{api="token",appid="` + appA + `",result="ok"} 2`,
		`wxtoken_upstream_requests_total{api="check",appid="` + appA + `",result="invalid"} 1`,
		`wxtoken_rotations_total{appid="` + appA + `",kind="access_token",reason="requested"} 1`,
		`wxtoken_refresh_requests_total{outcome="refreshed"} 1`,
		`wxtoken_refresh_requests_total{outcome="deduped"} 1`,
	} {
		if !strings.Contains(after, want) {
			t.Errorf("after a refresh /metrics lacks %q", want)
		}
	}

	// One JSON line per rotation, with what an operator needs and no token.
	var rotations int
	for _, line := range strings.Split(p.output.String(), "\n") {
		if !strings.Contains(line, `"msg":"token rotated"`) {
			continue
		}
		rotations++
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("not JSON: %s", line)
		}
		for _, field := range []string{"appid", "revision", "reason", "expires_at", "upstream_latency"} {
			if _, ok := entry[field]; !ok {
				t.Errorf("rotation line without %s: %s", field, line)
			}
		}
	}
	if rotations != 2 {
		t.Errorf("%d rotation lines, want 2", rotations)
	}
	logs := p.output.String()
	if strings.Contains(logs, fake.Current(appA)) || strings.Contains(logs, "s3cr3t") {
		t.Error("a token or the secret is in the logs")
	}

	// Without NATS the process is alive but not ready.
	srv.Shutdown()
	srv.WaitForShutdown()
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable {
			if !strings.Contains(body, "NATS") {
				t.Errorf("/readyz says %q", body)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("/readyz stayed ready without NATS")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz without NATS: %d", code)
	}
}

// metricValue returns the value of the sample whose name and labels are series.
func metricValue(t *testing.T, exposition, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(exposition, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /metrics", series)
	return 0
}

// TestVersion: `wxtoken version` and `wxtoken --version` print the version
// and the build the Go toolchain recorded; the overview names them, and the
// WeCom keys beside the official accounts' ones.
func TestVersion(t *testing.T) {
	out, errOut, code := runWxtoken(t, nil, "version")
	if code != 0 || errOut != "" {
		t.Fatalf("version: exit %d, stderr %q", code, errOut)
	}
	if first, _, _ := strings.Cut(out, "\n"); first != "wxtoken "+publisher.Version {
		t.Errorf("version's first line is %q, want %q", first, "wxtoken "+publisher.Version)
	}
	for _, want := range []string{"module  github.com/wxtoken/wxtoken ", "go      " + runtime.Version() + " "} {
		if !strings.Contains(out, want) {
			t.Errorf("version lacks %q:\n%s", want, out)
		}
	}
	if again, _, code := runWxtoken(t, nil, "--version"); code != 0 || again != out {
		t.Errorf("--version: exit %d:\n%s\nwant what version printed:\n%s", code, again, out)
	}
	if _, errOut, code := runWxtoken(t, nil, "version", "extra"); code != 2 || !strings.Contains(errOut, "no arguments") {
		t.Errorf("version extra: exit %d, %q; want 2", code, errOut)
	}

	help, _, code := runWxtoken(t, nil, "--help")
	for _, want := range []string{"wxtoken version", "--version", "CORPID-AGENT (its token)", "CORPID-AGENT.jsapi_ticket",
		"CORPID-AGENT.agent_config_ticket", "wxtoken demo reject APPID"} {
		if code != 0 || !strings.Contains(help, want) {
			t.Errorf("--help: exit %d, lacks %q:\n%s", code, want, help)
		}
	}
}
