package test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestAgentUnderAnOperator treats the agent as an operator would: SIGHUP
// after editing its auth file (and after breaking it), a NATS restart
// under it, the token bucket deleted, and a SIGKILL and a start again.
// After each, a call through its proxy with a token WeChat has just
// ended is answered by WeChat with errcode 0: the agent got a new token
// from the refresher and sent the call again.
func TestAgentUnderAnOperator(t *testing.T) {
	ctx := testenv.Context(t, 120*time.Second)
	opts, natsURL, stopNATS := restartableNATS(t)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{Overlap: -1, ExpiresIn: time.Hour})
	fake.AddApp(appA, "secret-of-a")
	refresher := startWxtoken(t, "refresher", serveEnv(natsURL, wechatURL, "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s",
		"WXTOKEN_MIN_FORCE_INTERVAL=1ms"), "serve", "--instance", "refresher")
	refresher.waitOutput(t, ctx, "token rotated")

	authFile := filepath.Join(t.TempDir(), "auth.yaml")
	auth := func(token string) string {
		return fmt.Sprintf("clients:\n  - name: shop\n    token: %q\n    keys: [%s]\n", token, appA)
	}
	writeFile(t, authFile, auth("first-token-0123456789"))
	start := func() (*process, string) {
		p := startWxtoken(t, "agent", nil, "agent", "--nats-url", natsURL, "--listen", "127.0.0.1:0",
			"--wechat-base-url", wechatURL, "--auth-file", authFile)
		p.waitOutput(t, ctx, "agent listening")
		base := "http://" + listenAddr(t, p.output.String())
		awaitReady(t, ctx, p, base+"/readyz")
		return p, base
	}
	agent, base := start()
	bearer := "Bearer first-token-0123456789"
	read := func() answer {
		return call(t, ctx, "GET", base+"/v1/credentials/"+appA, nil, "Authorization", bearer)
	}
	// WeChat ends the token the bucket holds; a call with it through the
	// agent still works.
	callWithDeadToken := func(when string) {
		t.Helper()
		old := fake.Current(appA)
		fake.Issue(appA)
		got := call(t, ctx, "POST", base+"/cgi-bin/message/custom/send?access_token="+old, strings.NewReader(`{"touser":"o1"}`),
			"Authorization", bearer)
		if got.status != http.StatusOK || got.errcode(t) != 0 {
			t.Fatalf("%s: a call with a token WeChat ended = %d %s, want errcode 0 after the agent's retry", when, got.status, got.body)
		}
	}
	callWithDeadToken("at start")

	// SIGHUP reads the auth file again; a broken one changes nothing.
	writeFile(t, authFile, auth("second-token-0123456789"))
	agent.cmd.Process.Signal(syscall.SIGHUP)
	agent.waitOutput(t, ctx, "auth file reloaded")
	if got := read(); got.status != http.StatusUnauthorized {
		t.Errorf("the token removed from the auth file = %d, want 401", got.status)
	}
	bearer = "Bearer second-token-0123456789"
	if got := read(); got.status != http.StatusOK {
		t.Errorf("the token added = %d %s", got.status, got.body)
	}
	writeFile(t, authFile, "clients: [garbage")
	agent.cmd.Process.Signal(syscall.SIGHUP)
	agent.waitOutput(t, ctx, "the auth file was not reloaded")
	if got := read(); got.status != http.StatusOK {
		t.Errorf("after a broken auth file = %d, want the clients before kept", got.status)
	}

	// NATS restarts under it.
	stopNATS()
	startServer(t, opts)
	agent.waitOutput(t, ctx, "NATS reconnected")
	callWithDeadToken("after a NATS restart")

	// The token bucket is deleted; the refresher makes it again.
	js, _ := jetstream.New(testenv.Connect(t, natsURL))
	if err := js.DeleteKeyValue(ctx, kv.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	refresher.waitOutput(t, ctx, "the token bucket is repaired")
	if got := read(); got.status != http.StatusOK {
		t.Errorf("a read with the bucket deleted and made again = %d %s", got.status, got.body)
	}
	callWithDeadToken("after the bucket was deleted")

	// SIGKILL, and a start again (with the auth file mended).
	writeFile(t, authFile, auth("second-token-0123456789"))
	agent.cmd.Process.Kill()
	agent.wait(t, ctx)
	agent, base = start()
	callWithDeadToken("after a SIGKILL and a start again")
	assertNoToken(t, agent.output.String(), fake.Current(appA), "second-token-0123456789")
}
