package test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// loginBackends are the README's mini-program login backends: the
// interpreter's check, the marker of the snippet, the code block's
// language, and how a script made of the snippet prints what wx_login
// returns for code.
var loginBackends = []struct {
	name, interpreter string
	check             []string
	marker, lang      string
	run               func(interpreter, script, code string) *exec.Cmd
}{
	{"php", "php", []string{"-r", `exit(function_exists("curl_init") ? 0 : 1);`}, "A mini-program login backend in PHP:\n", "php",
		func(php, script, code string) *exec.Cmd {
			return exec.Command(php, "-r", script+"\necho json_encode(wx_login('"+code+"'));")
		}},
	{"python", "python3", []string{"-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)"}, "In Python (the standard library):\n", "python",
		func(python, script, code string) *exec.Cmd {
			return exec.Command(python, "-c", script+"\nprint(json.dumps(wx_login('"+code+"')))")
		}},
	{"node", "node", []string{"-e", `process.exit(typeof fetch === "function" ? 0 : 1)`}, "In Node (its `fetch`):\n", "js",
		func(node, script, code string) *exec.Cmd {
			return exec.Command(node, "--input-type=module", "-e", script+"\nconsole.log(JSON.stringify(await wxLogin('"+code+"')))")
		}},
}

// TestLoginBackendsExchangeCodesThroughTheAgentWithNoSecret runs the
// README's login backends, in PHP, Python and Node, against an agent and a
// refresher run as processes, as nats.conf's agent and refresher users:
// each exchanges a code of its own and gets its user's openid and a
// session_key; WeChat sees each code once, always with the secret, which
// only the refresher was given. A caller that sends a secret is refused,
// counted and named in a warning, and its code never reaches WeChat.
func TestLoginBackendsExchangeCodesThroughTheAgentWithNoSecret(t *testing.T) {
	ctx := testenv.Context(t, 90*time.Second)
	srv := rolesServer(t)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-a")
	appsFile := filepath.Join(t.TempDir(), "apps.yaml")
	writeFile(t, appsFile, "apps:\n  - appid: "+appA+"\n    secret_env: SECRET_A\n")
	startWxtoken(t, "refresher", []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=refresher", "NATS_PASSWORD=" + passwords["refresher"],
		"WECHAT_BASE_URL=" + wechatURL, "WXTOKEN_APPS=" + appsFile, "SECRET_A=secret-a"}, "serve", "--instance", "refresher")
	testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, connectAs(t, srv, "admin").nc), appA))
	agent := startWxtoken(t, "agent", []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=agent", "NATS_PASSWORD=" + passwords["agent"]},
		"agent", "--listen", "127.0.0.1:0", "--wechat-base-url", wechatURL, "--keys", appA)
	agent.waitOutput(t, ctx, "agent listening")
	base := "http://" + listenAddr(t, agent.output.String())
	awaitReady(t, ctx, agent, base+"/readyz")

	codes := map[string]string{} // code -> the user it was issued for
	for _, backend := range loginBackends {
		t.Run(backend.name, func(t *testing.T) {
			interpreter := clientInterpreter(t, backend.interpreter, backend.check...)
			script := strings.NewReplacer("http://127.0.0.1:8180", base, "wx1234567890abcdef", appA).Replace(readmeBlock(t, backend.marker, backend.lang))
			user := backend.name + "-user"
			code := fake.LoginCode(appA, user)
			codes[code] = user
			cmd := backend.run(interpreter, script, code)
			cmd.Env = clientEnv()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the README's %s backend: %v\n%s\n--- the script:\n%s", backend.name, err, out, script)
			}
			var session struct {
				OpenID     string `json:"openid"`
				SessionKey string `json:"session_key"`
				UnionID    string `json:"unionid"`
			}
			if err := json.Unmarshal(out, &session); err != nil || session.OpenID != fakewechat.OpenID(appA, user) ||
				session.SessionKey == "" || session.UnionID != fakewechat.UnionID(user) {
				t.Errorf("the %s backend got %s, want %s's openid, a session_key and the unionid", backend.name, out, user)
			}
		})
	}

	// A service that still holds the secret.
	const leaked = "secret-a"
	leakedCode := fake.LoginCode(appA, "someone")
	status, body := httpGet(t, base+"/sns/jscode2session?appid="+appA+"&secret="+leaked+"&grant_type=authorization_code&js_code="+url.QueryEscape(leakedCode))
	if status != http.StatusBadRequest || !strings.Contains(body, `"errcode":40125`) || strings.Contains(body, leaked) {
		t.Errorf("a login with the secret = %d %s, want 400 with errcode 40125, without the secret", status, body)
	}
	agent.waitOutput(t, ctx, "carried a secret")
	if _, metrics := httpGet(t, base+"/metrics"); !strings.Contains(metrics, `wxtoken_agent_requests_with_secret_total{path="/sns/jscode2session"} 1`) {
		t.Errorf("the agent did not count the request with a secret:\n%s", metrics)
	}
	if strings.Contains(agent.output.String(), leaked) || strings.Contains(agent.output.String(), leakedCode) {
		t.Error("the agent logged the secret or the code")
	}

	// An agent run as the service user: the server refuses its login
	// requests, and the agent says why.
	asService := startWxtoken(t, "agent-as-service", []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=service", "NATS_PASSWORD=" + passwords["service"]},
		"agent", "--listen", "127.0.0.1:0", "--wechat-base-url", wechatURL, "--keys", appA, "--upstream-timeout", "1s")
	asService.waitOutput(t, ctx, "agent listening")
	serviceBase := "http://" + listenAddr(t, asService.output.String())
	awaitReady(t, ctx, asService, serviceBase+"/readyz")
	if status, body := httpGet(t, serviceBase+"/sns/jscode2session?appid="+appA+"&grant_type=authorization_code&js_code="+url.QueryEscape(fake.LoginCode(appA, "x"))); status != http.StatusServiceUnavailable ||
		!strings.Contains(body, "may not publish wechat.token.login."+appA+": run the agent as nats.conf's agent user") {
		t.Errorf("a login at an agent run as the service user = %d %s, want 503 naming the agent user", status, body)
	}

	calls := fake.LoginCalls()
	seen := map[string]int{}
	for _, call := range calls {
		seen[call.Code]++
		if !call.Secret || call.AppID != appA || call.ErrCode != 0 || call.From != "127.0.0.1" {
			t.Errorf("WeChat saw %+v, want the secret and a success, from the refresher's host", call)
		}
	}
	for code, user := range codes {
		if seen[code] != 1 {
			t.Errorf("WeChat saw %s's code %d times, want once", user, seen[code])
		}
	}
	if len(calls) != len(codes) || seen[leakedCode] != 0 {
		t.Errorf("WeChat saw %d login calls for %d codes (the refused one %d times)", len(calls), len(codes), seen[leakedCode])
	}
}

// TestAnAuthorizersLoginGoesWithThePlatformsToken: an account that
// authorized the platform logs its users in through the agent's component
// path; the refresher puts the platform's component_appid and current
// component_access_token in, and no secret goes to WeChat.
func TestAnAuthorizersLoginGoesWithThePlatformsToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	sys.authorized(t, ctx, authorizerA)
	agent := startWxtoken(t, "agent", nil, "agent", "--nats-url", sys.natsURL, "--listen", "127.0.0.1:0", "--wechat-base-url", sys.wechat,
		"--keys", componentApp+","+authorizerA)
	agent.waitOutput(t, ctx, "agent listening")
	base := "http://" + listenAddr(t, agent.output.String())
	awaitReady(t, ctx, agent, base+"/readyz")

	code := sys.fake.LoginCode(authorizerA, "platform-user")
	var session struct {
		OpenID  string `json:"openid"`
		ErrCode int    `json:"errcode"`
	}
	getJSON(t, base+"/app/"+authorizerA+"/sns/component/jscode2session?grant_type=authorization_code&js_code="+url.QueryEscape(code), &session)
	if session.OpenID != fakewechat.OpenID(authorizerA, "platform-user") {
		t.Errorf("the authorizer's login: %+v", session)
	}
	// The plain form for an authorizer: the refresher holds no secret of it.
	getJSON(t, base+"/sns/jscode2session?grant_type=authorization_code&appid="+authorizerA+"&js_code="+url.QueryEscape(sys.fake.LoginCode(authorizerA, "x")), &session)
	if session.ErrCode != 40097 {
		t.Errorf("jscode2session for an authorizer: errcode %d, want 40097 naming the component form", session.ErrCode)
	}
	calls := sys.fake.LoginCalls()
	if len(calls) != 1 || calls[0].Code != code || !calls[0].ComponentToken || calls[0].Secret || calls[0].ErrCode != 0 {
		t.Errorf("WeChat saw %+v, want the code once with the component token and no secret", calls)
	}
}
