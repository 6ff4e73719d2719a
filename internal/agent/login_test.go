package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// loginAgent is an agent in front of a refresher of two apps, with three
// clients: shop may read and log in to appA; web may read both and log in
// to appB alone; reader may read appA and log in to none.
type loginAgent struct {
	fake    *fakewechat.Server
	base    string // the agent's URL
	reg     *prometheus.Registry
	records chan logRecord
}

const (
	loginAppA = "wxa0000000000010a1"
	loginAppB = "wxa0000000000010b2"
)

var loginTokens = map[string]string{"shop": "shop-token-0123456789", "web": "web-token-0123456789", "reader": "reader-token-0123456789"}

func startLoginAgent(t *testing.T, ctx context.Context) loginAgent {
	t.Helper()
	return startLoginAgentVia(t, ctx, nil)
}

// startLoginAgentVia is startLoginAgent with the agent's calls to WeChat
// going to via(fake) rather than to the fake itself (the refresher's go to
// the fake); a nil via is none.
func startLoginAgentVia(t *testing.T, ctx context.Context, via func(*fakewechat.Server) http.Handler) loginAgent {
	t.Helper()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, wechat := testenv.WeChat(t, fakewechat.Config{})
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, loginAppA, loginAppB), UpstreamURL: wechat})
	bucket := testenv.Bucket(t, ctx, nc)
	for _, app := range []string{loginAppA, loginAppB} {
		testenv.Next(t, ctx, testenv.Entries(t, bucket, app))
	}
	client := func(name string, keys, login []string) Client {
		return Client{Name: name, TokenSHA256: sha256.Sum256([]byte(loginTokens[name])), Keys: keys, Login: login}
	}
	la := loginAgent{fake: fake, reg: prometheus.NewRegistry(), records: make(chan logRecord, 256)}
	if via != nil {
		front := httptest.NewServer(via(fake))
		t.Cleanup(front.Close)
		wechat = front.URL
	}
	base, _ := url.Parse(wechat)
	a, err := New(Config{Conn: nc, WeChatBase: base, WeComBase: base, Registry: la.reg, Logger: slog.New(recordingHandler{la.records}),
		Clients: []Client{
			client("shop", []string{loginAppA}, nil),
			client("web", []string{"*"}, []string{loginAppB}),
			client("reader", []string{loginAppA}, []string{}),
		}})
	if err != nil {
		t.Fatal(err)
	}
	a.Run()
	t.Cleanup(func() { a.Close() })
	web := httptest.NewServer(a.Server().Handler)
	t.Cleanup(web.Close)
	la.base = web.URL
	for a.Ready() != nil {
		select {
		case <-ctx.Done():
			t.Fatalf("the agent never got ready: %v", a.Ready())
		case <-time.After(10 * time.Millisecond): // polled: readiness announces nothing
		}
	}
	return la
}

// login GETs path as client and returns the status and WeChat's answer.
func (la loginAgent) login(t *testing.T, ctx context.Context, client, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, la.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+loginTokens[client])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var answer map[string]any
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatalf("%s: %s", path, body)
	}
	return resp.StatusCode, answer
}

func errcode(answer map[string]any) int {
	code, _ := answer["errcode"].(float64)
	return int(code)
}

// TestALoginThroughTheAgentCarriesNoSecretFromTheCaller: a code exchanged
// at the agent, by appid, by the /app/ prefix or by the one app the client
// may log in to, reaches WeChat once with the secret the refresher put in;
// WeChat's answers, errors included, come back as they were.
func TestALoginThroughTheAgentCarriesNoSecretFromTheCaller(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	la := startLoginAgent(t, ctx)
	jscode := func(code string) string { return "js_code=" + url.QueryEscape(code) + "&grant_type=authorization_code" }

	var codes []string
	for i, path := range []string{
		"/sns/jscode2session?appid=" + loginAppA + "&",
		"/app/" + loginAppA + "/sns/jscode2session?",
		"/sns/jscode2session?secret=&", // an SDK configured with an empty secret
		"/sns/jscode2session?",         // shop may log in to appA alone
	} {
		user := "user" + string(rune('a'+i))
		code := la.fake.LoginCode(loginAppA, user)
		codes = append(codes, code)
		status, answer := la.login(t, ctx, "shop", path+jscode(code))
		if status != http.StatusOK || answer["openid"] != fakewechat.OpenID(loginAppA, user) || answer["session_key"] == "" {
			t.Errorf("%s: %d %v", path, status, answer)
		}
	}
	_, again := la.login(t, ctx, "shop", "/sns/jscode2session?appid="+loginAppA+"&"+jscode(codes[0]))
	if errcode(again) != 40163 {
		t.Errorf("a code used twice: %v, want WeChat's 40163", again)
	}
	calls := la.fake.LoginCalls()
	if len(calls) != len(codes)+1 {
		t.Fatalf("WeChat saw %d calls, want %d", len(calls), len(codes)+1)
	}
	for i, call := range calls[:len(codes)] {
		if call.Code != codes[i] || !call.Secret || call.AppID != loginAppA {
			t.Errorf("WeChat's call %d: %+v, want code %d with the secret", i, call, i)
		}
	}

	// A web page's login and its renewal.
	status, answer := la.login(t, ctx, "web", "/sns/oauth2/access_token?appid="+loginAppB+"&grant_type=authorization_code&code="+
		url.QueryEscape(la.fake.OAuthCode(loginAppB, "web-user", "snsapi_userinfo")))
	refresh, _ := answer["refresh_token"].(string)
	if status != http.StatusOK || refresh == "" {
		t.Fatalf("the web login: %d %v", status, answer)
	}
	status, answer = la.login(t, ctx, "web", "/app/"+loginAppB+"/sns/oauth2/refresh_token?grant_type=refresh_token&refresh_token="+url.QueryEscape(refresh))
	if status != http.StatusOK || answer["openid"] != fakewechat.OpenID(loginAppB, "web-user") {
		t.Errorf("the renewal: %d %v", status, answer)
	}
	// The user's profile, with the user's token: passed on as it came,
	// not replaced by the app's, under the app's base URL too.
	userToken, _ := answer["access_token"].(string)
	for _, prefix := range []string{"", "/app/" + loginAppB} {
		status, answer = la.login(t, ctx, "web", prefix+"/sns/userinfo?access_token="+url.QueryEscape(userToken)+"&openid="+fakewechat.OpenID(loginAppB, "web-user"))
		if status != http.StatusOK || answer["nickname"] != "web-user" {
			t.Errorf("%s/sns/userinfo with the user's token: %d %v", prefix, status, answer)
		}
	}
}

// TestTheAuthFileAllowsLoginsPerClientAndKey: a client logs users in to
// the keys of its login list (its keys when it has none) and to no other;
// one it may not is answered as an app the agent does not serve, and
// reaches neither the refresher nor WeChat.
func TestTheAuthFileAllowsLoginsPerClientAndKey(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	la := startLoginAgent(t, ctx)
	for _, tc := range []struct {
		client, app string
		ok          bool
	}{
		{"shop", loginAppA, true},
		{"shop", loginAppB, false}, // not among its keys
		{"web", loginAppB, true},
		{"web", loginAppA, false}, // among its keys, not its logins
		{"reader", loginAppA, false},
	} {
		code := la.fake.LoginCode(tc.app, "someone")
		status, answer := la.login(t, ctx, tc.client, "/sns/jscode2session?appid="+tc.app+"&grant_type=authorization_code&js_code="+url.QueryEscape(code))
		if got := answer["openid"] != nil; got != tc.ok || status != http.StatusOK || !tc.ok && errcode(answer) != 40013 {
			t.Errorf("%s logging in to %s: %d %v, want allowed %v", tc.client, tc.app, status, answer, tc.ok)
		}
	}
	if calls := la.fake.LoginCalls(); len(calls) != 2 {
		t.Errorf("WeChat saw %d calls, want the 2 allowed", len(calls))
	}
}

// TestALoginThatCarriesASecretIsRefusedAndCounted: the agent forwards no
// secret; it answers 400 in WeChat's shape, counts the request by path,
// and warns naming the client, never the secret.
func TestALoginThatCarriesASecretIsRefusedAndCounted(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	la := startLoginAgent(t, ctx)
	const secret = "the-secret-this-service-still-holds"
	code := la.fake.LoginCode(loginAppA, "someone")
	for _, q := range []string{"secret=" + secret, "appsecret=" + secret} {
		status, answer := la.login(t, ctx, "shop", "/sns/jscode2session?appid="+loginAppA+"&grant_type=authorization_code&js_code="+url.QueryEscape(code)+"&"+q)
		if status != http.StatusBadRequest || errcode(answer) != 40125 || strings.Contains(answer["errmsg"].(string), secret) {
			t.Errorf("%s: %d %v, want 400 and errcode 40125, without the secret", q, status, answer)
		}
	}
	status, answer := la.login(t, ctx, "shop", "/app/"+loginAppA+"/sns/oauth2/component/access_token?grant_type=authorization_code&code=c&component_access_token="+secret)
	if status != http.StatusBadRequest || errcode(answer) != 40125 {
		t.Errorf("a component token sent: %d %v", status, answer)
	}
	warned := awaitLog(t, ctx, la.records, "warning of the secret", func(r logRecord) bool { return r.level == slog.LevelWarn && r.attrs["client"] == "shop" }, func(logRecord) {})
	for _, v := range append([]string{warned.msg}, mapValues(warned.attrs)...) {
		if strings.Contains(v, secret) || strings.Contains(v, code) {
			t.Errorf("the warning shows the secret or the code: %q %v", warned.msg, warned.attrs)
		}
	}
	if n := len(la.fake.LoginCalls()); n != 0 {
		t.Errorf("WeChat saw %d login calls, want none", n)
	}
	counted := map[string]float64{}
	families, _ := la.reg.Gather()
	for _, f := range families {
		if f.GetName() == "wxtoken_agent_requests_with_secret_total" {
			for _, m := range f.GetMetric() {
				counted[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if counted["/sns/jscode2session"] != 2 || counted["/sns/oauth2/component/access_token"] != 1 {
		t.Errorf("requests with a secret counted: %v", counted)
	}
}

func mapValues(m map[string]string) []string {
	var vs []string
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}

// TestTheAuthFilesLoginList: absent, a client logs in to its keys; empty,
// to none; a ticket's key is refused, naming the client and the field.
func TestTheAuthFilesLoginList(t *testing.T) {
	load := func(login string) ([]Client, error) {
		path := t.TempDir() + "/auth.yaml"
		os.WriteFile(path, []byte("clients:\n  - name: shop\n    token: shop-token-0123456789\n    keys: [wx1234567890abcdef]\n"+login), 0o600)
		return LoadClients(path)
	}
	for _, tc := range []struct {
		login string
		may   bool
	}{
		{"", true},
		{"    login: []\n", false},
		{"    login: [wx1234567890abcdef]\n", true},
		{"    login: ['*']\n", true},
	} {
		clients, err := load(tc.login)
		if err != nil {
			t.Fatalf("%q: %v", tc.login, err)
		}
		if got := (caller{client: &clients[0]}).mayLogin("wx1234567890abcdef"); got != tc.may {
			t.Errorf("%q: may log in %v, want %v", tc.login, got, tc.may)
		}
	}
	if _, err := load("    login: [wx1234567890abcdef.jsapi_ticket]\n"); err == nil || !strings.Contains(err.Error(), `client 1 ("shop"): login:`) {
		t.Errorf("a ticket's key in login: %v", err)
	}
}

// TestALoginNoRefresherAnswers: with no refresher on NATS, a login is
// answered at once, 503 with errcode -1, saying what to check.
func TestALoginNoRefresherAnswers(t *testing.T) {
	ctx := testenv.Context(t, 10*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	base, _ := url.Parse("http://127.0.0.1:1")
	a, err := New(Config{Conn: nc, Keys: []string{loginAppA}, WeChatBase: base, WeComBase: base})
	if err != nil {
		t.Fatal(err)
	}
	a.Run()
	t.Cleanup(func() { a.Close() })
	web := httptest.NewServer(a.Server().Handler)
	t.Cleanup(web.Close)

	status, body := get(t, ctx, web.URL+"/sns/jscode2session?appid="+loginAppA+"&grant_type=authorization_code&js_code=c")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"errcode":-1`) || !strings.Contains(body, "is wxtoken serve running") {
		t.Errorf("a login with no refresher = %d %s", status, body)
	}
}
