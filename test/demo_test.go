package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/test/testenv"
)

// The demo's classic app (cmd/wxtoken's demoAppID).
const demoApp = "wxdemo0123456789ab"

// TestServeDemo runs `wxtoken serve --demo` as a newcomer would, on ports
// of its own given by the flags. The fake WeChat is on the port given, and
// the agent the demo runs in the same process answers with the demo token
// and forwards API calls to the fake. `refresh --force` says why it keeps a
// token WeChat still accepts; after `demo reject` it rotates it; after
// another, a call through the agent gets 40001 from the fake, and the agent
// refreshes and retries it.
func TestServeDemo(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	natsListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	wechatListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	agentListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startWxtoken(t, "demo", []string{"WXTOKEN_DEMO_AGENT_LISTEN=" + agentListen}, "serve", "--demo",
		"--nats-listen", natsListen, "--demo-wechat-listen", wechatListen, "--min-force-interval", "1ms", "--http-addr", httpListen)
	p.waitOutput(t, ctx, "demo: agent listening")
	logs := p.output.String()
	for _, want := range []string{
		`msg="demo: fake WeChat running" url=http://` + wechatListen + " ",
		`reject_a_token="go run ./cmd/wxtoken demo reject ` + demoApp + ` --demo-wechat-listen ` + wechatListen + `"`,
		`msg="demo: agent listening, forwarding to the fake WeChat" url=http://` + agentListen + " ",
		`status_page=http://` + httpListen + `/`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the demo's log lacks %q:\n%s", want, logs)
		}
	}
	// The demo reads WeChat's quota every 10 s, so that `demo fetch` is
	// seen within seconds (TestDemoFetchIsSeenAsAnotherParty), and says how.
	p.waitOutput(t, ctx, `quota_every=10s be_another_party="go run ./cmd/wxtoken demo fetch `+demoApp+` --demo-wechat-listen `+wechatListen+`"`)
	agentURL, wechatURL := "http://"+agentListen, "http://"+wechatListen
	awaitReady(t, ctx, p, agentURL+"/readyz")
	// A newcomer's first screen holds no warning: the agent starts once
	// the refresher has made the bucket, not before, to warn it is missing.
	if warnings := p.output.linesWith("level=WARN"); len(warnings) > 0 {
		t.Errorf("the demo warned as it started:\n%s", strings.Join(warnings, "\n"))
	}
	env := []string{"NATS_URL=nats://" + natsListen}
	reject := func() {
		t.Helper()
		out, errOut, code := runWxtoken(t, nil, "demo", "reject", demoApp, "--demo-wechat-listen", wechatListen)
		if code != 0 || !strings.Contains(out, demoApp+": the demo's fake WeChat now rejects its current token") {
			t.Fatalf("demo reject: exit %d: %s%s", code, out, errOut)
		}
	}

	// The agent serves the token in the bucket, which the fake on the
	// given port issued, and forwards calls there.
	held := demoCredential(t, ctx, agentURL, "")
	stored, _, code := runWxtoken(t, env, "get", demoApp)
	if code != 0 || held.Value+"\n" != stored {
		t.Fatalf("the agent serves %.12s..., the bucket holds %.12q (get exit %d)", held.Value, stored, code)
	}
	// The status page the demo printed shows the app, not its token.
	if status, page := httpGet(t, "http://"+httpListen+"/"); status != http.StatusOK || !strings.Contains(page, `data-key="`+demoApp+`"`) || strings.Contains(page, held.Value) {
		t.Errorf("the demo's status page: %d, shows %s: %v, shows its token: %v", status, demoApp,
			strings.Contains(page, `data-key="`+demoApp+`"`), strings.Contains(page, held.Value))
	}
	var answer map[string]any
	if getJSON(t, wechatURL+"/cgi-bin/getcallbackip?access_token="+held.Value, &answer); answer["ip_list"] == nil {
		t.Errorf("the fake on %s does not know the demo token: %v", wechatListen, answer)
	}
	answer = nil
	if getJSON(t, agentURL+"/app/"+demoApp+"/cgi-bin/user/get", &answer); answer["total"] != 2.0 {
		t.Errorf("user/get through the agent: %v, want the fake's two followers", answer)
	}

	// A newcomer logs the demo user in: a code from the fake, as wx.login
	// gives one, exchanged at the agent's jscode2session, once.
	if want := `try_login="code=$(curl -s '` + wechatURL + `/demo/login_code?appid=` + demoApp + `'); curl -s '` + agentURL +
		`/sns/jscode2session?appid=` + demoApp + `&grant_type=authorization_code&js_code='$code"`; !strings.Contains(logs, want) {
		t.Errorf("the demo's log lacks the login commands %s:\n%s", want, logs)
	}
	status, loginCode := httpGet(t, wechatURL+"/demo/login_code?appid="+demoApp)
	loginCode = strings.TrimSpace(loginCode)
	if status != http.StatusOK || loginCode == "" {
		t.Fatalf("GET /demo/login_code: %d %q", status, loginCode)
	}
	exchange := agentURL + "/sns/jscode2session?appid=" + demoApp + "&grant_type=authorization_code&js_code=" + loginCode
	var session map[string]any
	if getJSON(t, exchange, &session); session["openid"] == nil || session["session_key"] == nil {
		t.Errorf("the demo code exchanged at the agent: %v, want an openid and a session_key", session)
	}
	session = nil
	if getJSON(t, exchange, &session); session["errcode"] != 40163.0 {
		t.Errorf("the demo code exchanged again: %v, want errcode 40163", session)
	}
	if status, body := httpGet(t, wechatURL+"/demo/login_code?appid=wx0000000000000000"); status != http.StatusNotFound || !strings.Contains(body, demoApp) {
		t.Errorf("a login code of an app not the demo's: %d %q, want 404 naming the demo's apps", status, body)
	}

	// A token WeChat accepts is kept, and the line says why.
	out, _, code := runWxtoken(t, env, "refresh", demoApp, "--force")
	if code != 0 || !strings.Contains(out, "not refreshed: WeChat still accepts this token (the refresher asked it with getcallbackip)") ||
		!strings.Contains(out, "`wxtoken demo reject "+demoApp+"`") {
		t.Errorf("refresh --force of a valid token: exit %d: %s", code, out)
	}
	// One the fake rejects is rotated.
	reject()
	out, _, code = runWxtoken(t, env, "refresh", demoApp, "--force")
	if code != 0 || !strings.HasPrefix(out, demoApp+": refreshed; revision ") {
		t.Fatalf("refresh --force after demo reject: exit %d: %s", code, out)
	}
	m := regexp.MustCompile(`revision (\d+),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no revision in %q", out)
	}
	forced, _ := strconv.ParseUint(m[1], 10, 64)
	if forced <= held.Revision {
		t.Errorf("refresh --force answered revision %d, want one after %d", forced, held.Revision)
	}

	// The agent holds the new token; rejected, a call with it is
	// refreshed and retried by the agent.
	for held.Revision < forced {
		held = demoCredential(t, ctx, agentURL, "?wait=3&after="+strconv.FormatUint(held.Revision, 10))
	}
	reject()
	answer = nil
	if getJSON(t, agentURL+"/app/"+demoApp+"/cgi-bin/user/get", &answer); answer["total"] != 2.0 {
		t.Errorf("user/get through the agent with a rejected token: %v, want the fake's answer after the agent's retry", answer)
	}
	if now := demoCredential(t, ctx, agentURL, ""); now.Revision <= held.Revision {
		t.Errorf("the agent holds revision %d after its retry, want one after the rejected %d", now.Revision, held.Revision)
	}

	// A second demo (a data dir of its own) on the same fake WeChat port
	// says so; the defaults are the fixed ports.
	second := startWxtoken(t, "second demo", nil, "serve", "--demo", "--demo-wechat-listen", wechatListen,
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--demo-agent-listen", "off")
	code = second.wait(t, testenv.Context(t, 10*time.Second))
	if want := "demo: the fake WeChat cannot listen on " + wechatListen + ": it is in use"; code != 1 || !strings.Contains(second.output.String(), want) {
		t.Errorf("a second demo on %s: exit %d, %q; want 1 and %q", wechatListen, code, second.output.String(), want)
	}
	help, _, _ := runWxtoken(t, nil, "serve", "--help")
	for _, want := range []string{"(default 127.0.0.1:8181) [$WXTOKEN_DEMO_WECHAT_LISTEN]", "(default 127.0.0.1:8180) [$WXTOKEN_DEMO_AGENT_LISTEN]",
		"with --demo: 127.0.0.1:8182"} {
		if !strings.Contains(help, want) {
			t.Errorf("serve --help lacks %q", want)
		}
	}

	// SIGTERM stops the agent, the refresher and NATS, and exits 0.
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, ctx); code != 0 {
		t.Errorf("SIGTERM: exit status %d, want 0", code)
	}
}

// demoCredential is the demo app's credential as the agent at base serves
// it, with query added to the URL ("" or "?..."). A long poll that ran out
// (304) is asked again.
func demoCredential(t *testing.T, ctx context.Context, base, query string) (c struct {
	Value    string `json:"value"`
	Revision uint64 `json:"revision"`
}) {
	t.Helper()
	url := base + "/v1/credentials/" + demoApp + query
	for {
		status, body := httpGet(t, url) // a long poll of at most 3s: httpGet waits 5
		if status == http.StatusNotModified && ctx.Err() == nil {
			continue
		}
		if err := json.Unmarshal([]byte(body), &c); status != http.StatusOK || err != nil || c.Value == "" {
			t.Fatalf("GET %s: %d %s", url, status, body)
		}
		return c
	}
}
