package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// clientSendBody is the custom/send body the scripts in test/clients post
// (their SEND_BODY).
const clientSendBody = `{"touser":"oFAKE0000000000000000000001","msgtype":"text","text":{"content":"hello from wxtoken agent"}}`

// clientSteps are the lines "ok <step> <what> ..." a client script prints,
// in order, before "done".
var clientSteps = []string{
	"a credential", "b not-modified", "c rotated", "d refresh",
	"e proxy-send", "e proxy-send-prefix", "e proxy-user-get",
	"f direct-rejected", "f direct-refresh", "f direct-retry", "f proxy-recovered",
	"g token-endpoint", "h jssdk",
}

// TestAgentClientPHP runs test/clients/agent_client.php, curl as WeChat's
// PHP tutorials use it, against a refresher and an agent.
func TestAgentClientPHP(t *testing.T) {
	php := clientInterpreter(t, "php", "-r", `exit(function_exists("curl_init") && function_exists("json_decode") ? 0 : 1);`)
	testAgentClient(t, php, "agent_client.php")
}

// TestAgentClientPython runs test/clients/agent_client.py (the standard
// library only) against a refresher and an agent.
func TestAgentClientPython(t *testing.T) {
	python := clientInterpreter(t, "python3", "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)")
	testAgentClient(t, python, "agent_client.py")
}

// TestAgentClientNode runs test/clients/agent_client.mjs (global fetch, no
// npm packages) against a refresher and an agent.
func TestAgentClientNode(t *testing.T) {
	node := clientInterpreter(t, "node", "-e", `process.exit(typeof fetch === "function" ? 0 : 1)`)
	testAgentClient(t, node, "agent_client.mjs")
}

// testAgentClient runs one client script through steps a to h against a
// system of its own, answering its NEED lines, and then checks what the fake
// WeChat saw: only the refresher's token fetches, the business calls with
// the token the agent held, each forced refresh asked for once.
func testAgentClient(t *testing.T, interpreter, script string) {
	ctx := testenv.Context(t, 120*time.Second)
	started := time.Now()
	sys := startAgentSystem(t, agentSystemOptions{})
	t.Logf("system up in %s", time.Since(started).Round(time.Millisecond))
	checkAgentClient(t, ctx, sys, interpreter, script)
}

// checkAgentClient runs script against sys and checks the run and the
// fake's side of it; it stops sys.
func checkAgentClient(t *testing.T, ctx context.Context, sys *agentSystem, interpreter, script string) {
	t.Helper()
	ran := time.Now()
	run := runClient(t, ctx, sys, interpreter, filepath.Join("clients", script))
	t.Logf("%s ran in %s", script, time.Since(ran).Round(time.Millisecond))
	if run.code != 0 {
		t.Fatalf("%s: exit status %d\nstdout:\n%s\nstderr:\n%s", script, run.code, run.stdout, run.stderr)
	}
	var got []string
	for _, s := range run.steps {
		got = append(got, s.step+" "+s.what)
	}
	if !slices.Equal(got, clientSteps) || !run.done {
		t.Fatalf("%s printed the steps %q (done: %v), want %q\nstdout:\n%s", script, got, run.done, clientSteps, run.stdout)
	}
	step := func(name string) clientStep { return run.steps[slices.Index(clientSteps, name)] }
	for _, name := range []string{"d refresh", "f direct-refresh"} {
		if s := step(name); s.fields["refreshed"] != "true" {
			t.Errorf("%s: refreshed=%s after the test revoked revision %s, want true", name, s.fields["refreshed"], s.fields["stale"])
		}
	}
	if len(run.revoked) != 3 {
		t.Errorf("the script asked for %d revocations, want 3", len(run.revoked))
	}

	sys.stop(t, ctx) // every token request made is now counted
	fake, appid := sys.Fake, sys.AppID
	records := sys.records(t, ctx, appid)
	requested := 0
	for _, rec := range records {
		if rec.Reason == kv.ReasonRequested {
			requested++
		}
	}
	calls, issued := fake.Calls(appid), fake.Issued(appid)
	t.Logf("fake: %d token requests, %d tokens issued, %d revisions stored (%d requested); revoked %v",
		calls, issued, len(records), requested, run.revoked)
	// A token request from a client (which has no secret) is refused and
	// issues nothing; one the agent forwarded would be too.
	if calls != issued || issued != len(records) {
		t.Errorf("%d token requests at the fake, %d tokens issued, %d stored: someone but the refresher asked WeChat for a token",
			calls, issued, len(records))
	}
	// d, f's refresh and the agent's own refresh in f: one forced fetch each.
	if requested != 3 {
		t.Errorf("%d tokens fetched on request, want 3 (d, f's refresh, the agent's refresh on 40001)", requested)
	}
	if calls, issued, _ := fake.TicketCalls(appid, "jsapi"); calls != 1 || issued != 1 {
		t.Errorf("jsapi ticket: %d getticket calls at the fake, %d issued; want 1, the refresher's (the agent answers from memory)", calls, issued)
	}

	// custom/send: two in e, the retry in f, the agent's retry in f; the
	// revoked token in f directly and the agent's first try with it.
	if ok, rejected := fake.APICalls(fakewechat.PathSendMessage); ok != 4 || rejected != 2 {
		t.Errorf("custom/send at the fake: %d accepted, %d rejected; want 4 and 2", ok, rejected)
	}
	if ok, rejected := fake.APICalls(fakewechat.PathUserList); ok != 1 || rejected != 0 {
		t.Errorf("user/get at the fake: %d accepted, %d rejected; want 1 and 0", ok, rejected)
	}
	recovered := step("f proxy-recovered").revision(t, "revision")
	last := fake.LastAPICall(fakewechat.PathSendMessage)
	if want := records[recovered].Value; last.Token != want {
		t.Errorf("the agent's retry of custom/send went with %.12s..., want the token of revision %d, %.12s...", last.Token, recovered, want)
	}
	sum := sha256.Sum256([]byte(clientSendBody))
	if last.BodySHA256 != hex.EncodeToString(sum[:]) || last.BodyLen != int64(len(clientSendBody)) {
		t.Errorf("the agent's retry of custom/send arrived with %d bytes (sha256 %s), want the client's %d", last.BodyLen, last.BodySHA256, len(clientSendBody))
	}
	if c := last.Header.Get("Cookie"); c != "" {
		t.Errorf("the agent forwarded the client's Cookie %q", c)
	}
	held := step("d refresh").revision(t, "revision")
	if got, want := fake.LastAPICall(fakewechat.PathUserList).Token, records[held].Value; got != want {
		t.Errorf("user/get went with %.12s..., want the token of revision %d the agent held, %.12s...", got, held, want)
	}
}

// clientInterpreter returns the path of name once check (its arguments)
// exits 0. When the interpreter is missing or fails the check the test is
// skipped, or fails with WXTOKEN_REQUIRE_CLIENTS=1 (as CI sets it).
func clientInterpreter(t *testing.T, name string, check ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		var out []byte
		if out, err = exec.Command(path, check...).CombinedOutput(); err != nil {
			err = fmt.Errorf("%s lacks what the client needs (%s %s: %v) %s", name, name, strings.Join(check, " "), err, out)
		}
	} else {
		err = fmt.Errorf("%s not installed", name)
	}
	if err != nil {
		if os.Getenv("WXTOKEN_REQUIRE_CLIENTS") == "1" {
			t.Fatalf("%v (WXTOKEN_REQUIRE_CLIENTS=1)", err)
		}
		t.Skip(err)
	}
	return path
}

// clientRun is what a client script printed and how it ended.
type clientRun struct {
	steps          []clientStep
	done           bool     // it printed "done"
	revoked        []uint64 // the revisions it asked the test to revoke
	stdout, stderr string
	code           int
}

// clientStep is a line "ok <step> <what> key=value ...".
type clientStep struct {
	step, what string
	fields     map[string]string
}

func (s clientStep) revision(t testing.TB, field string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s.fields[field], 10, 64)
	if err != nil {
		t.Fatalf("step %s %s: %s=%q is not a revision", s.step, s.what, field, s.fields[field])
	}
	return n
}

// runClient runs script with the agent's URL, the appid and the fake's URL,
// and answers each "NEED revoke <revision>" it prints: it revokes the token
// of that revision at the fake and writes "OK".
func runClient(t *testing.T, ctx context.Context, sys *agentSystem, interpreter, script string) clientRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, interpreter, script, sys.URL, sys.AppID, sys.WeChatURL)
	cmd.Env = clientEnv()
	cmd.WaitDelay = 5 * time.Second
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var run clientRun
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(&out, line)
		t.Logf("%s: %s", filepath.Base(script), line)
		switch fields := strings.Fields(line); {
		case len(fields) == 3 && fields[0] == "NEED" && fields[1] == "revoke":
			rev, err := strconv.ParseUint(fields[2], 10, 64)
			if err != nil {
				t.Fatalf("%s: %q names no revision", script, line)
			}
			sys.Fake.Revoke(sys.token(t, ctx, sys.AppID, rev))
			run.revoked = append(run.revoked, rev)
			if _, err := io.WriteString(stdin, "OK\n"); err != nil {
				t.Fatalf("%s: writing OK: %v", script, err)
			}
		case len(fields) >= 3 && fields[0] == "ok":
			s := clientStep{step: fields[1], what: fields[2], fields: map[string]string{}}
			for _, f := range fields[3:] {
				if k, v, ok := strings.Cut(f, "="); ok {
					s.fields[k] = v
				}
			}
			run.steps = append(run.steps, s)
		case line == "done":
			run.done = true
		}
	}
	stdin.Close()
	err = cmd.Wait()
	run.stdout, run.stderr = out.String(), stderr.String()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s did not finish in time\nstdout:\n%s\nstderr:\n%s", script, run.stdout, run.stderr)
	case errors.As(err, &exit):
		run.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", script, err, run.stdout, run.stderr)
	}
	return run
}

// clientEnv is the test's environment without proxy settings: the scripts
// talk to loopback servers only. (Not a minimal one: interpreter shims,
// pyenv's say, need their variables.)
func clientEnv() []string {
	var env []string
	for _, v := range os.Environ() {
		name, _, _ := strings.Cut(v, "=")
		switch strings.ToLower(name) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		env = append(env, v)
	}
	return env
}

// TestReadmePythonSnippetGoesOnAfterA429 runs the README's Python snippet
// as printed, against an agent, right after a forced refresh of its app
// that found the token valid: with a long --min-force-interval, the
// snippet's own refresh is answered 429 (rate_limited), and it goes on with
// the value the agent holds.
func TestReadmePythonSnippetGoesOnAfterA429(t *testing.T) {
	python := clientInterpreter(t, "python3", "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)")
	snippet := readmeBlock(t, "Python 3, standard library only:\n", "python")
	ctx := testenv.Context(t, 60*time.Second)
	// Tokens of two hours: no scheduled rotation runs between the
	// snippet's read and its refresh.
	sys := startAgentSystem(t, agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: 2 * time.Hour},
		RefresherEnv: []string{"WXTOKEN_MIN_FORCE_INTERVAL=1h"}})
	held := awaitEndpoint(t, ctx, sys.NC, sys.AppID)
	if reply := request(t, ctx, sys.NC, sys.AppID, kv.RefreshRequest{StaleRevision: &held.Revision}); reply.Refreshed || reply.Error != nil {
		t.Fatalf("the forced refresh before the snippet: %+v, want the valid token kept", reply)
	}

	script := strings.NewReplacer("http://127.0.0.1:8180", sys.URL, "wx1234567890abcdef", sys.AppID).Replace(snippet) + "print(token)\n"
	cmd := exec.CommandContext(ctx, python, "-c", script)
	cmd.Env = clientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's Python snippet: %v\n%s\n--- the script:\n%s", err, out, script)
	}
	if want := sys.token(t, ctx, sys.AppID, held.Revision); string(out) != want+"\n" {
		t.Errorf("the snippet went on with %.12q..., want the token held, %.12s...", out, want)
	}
	_, metrics := httpGet(t, sys.URL+"/metrics")
	if !strings.Contains(metrics, `wxtoken_agent_refreshes_total{outcome="rate_limited"} 1`) {
		t.Errorf("the agent counted no rate-limited refresh: the snippet did not meet a 429\n%s", metrics)
	}
}

// readmeBlock returns the first ```lang code block after the line marker
// in the README.
func readmeBlock(t *testing.T, marker, lang string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, block, ok := strings.Cut(after, "```"+lang+"\n")
	if !ok {
		t.Fatalf("README.md has no ```%s block after %q", lang, marker)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("the ```%s block after %q does not end", lang, marker)
	}
	return block
}
