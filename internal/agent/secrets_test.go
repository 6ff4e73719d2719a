package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// wechatRecorder keeps every request the agent sent to WeChat: its path,
// query and body.
type wechatRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (rec *wechatRecorder) via(fake *fakewechat.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		rec.mu.Lock()
		rec.calls = append(rec.calls, r.URL.Path+"?"+r.URL.RawQuery+" "+string(body))
		rec.mu.Unlock()
		fake.ServeHTTP(w, r)
	})
}

func (rec *wechatRecorder) seen() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.calls...)
}

// call makes a request to the agent as client and returns the status and
// WeChat's (or the agent's) answer.
func (la loginAgent) call(t *testing.T, ctx context.Context, client, method, path, contentType, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, la.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+loginTokens[client])
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var answer map[string]any
	if err := json.Unmarshal(raw, &answer); err != nil {
		t.Fatalf("%s %s: %s", method, path, raw)
	}
	return resp.StatusCode, answer
}

// secretsCounted is wxtoken_agent_requests_with_secret_total by path.
func (la loginAgent) secretsCounted(t *testing.T) map[string]float64 {
	t.Helper()
	counted := map[string]float64{}
	families, err := la.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "wxtoken_agent_requests_with_secret_total" {
			for _, m := range f.GetMetric() {
				counted[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return counted
}

// TestEveryRequestThatCarriesASecretIsCountedAndNoneIsForwarded: a secret
// under any of its names, in the query (any of its values), a form or a
// JSON body, is counted by path and warned about naming the client and
// never the value, on every path. The token paths and the own API still
// answer from memory; the login paths and the paths forwarded to WeChat refuse it, and
// WeChat sees none of it. An empty secret is none.
func TestEveryRequestThatCarriesASecretIsCountedAndNoneIsForwarded(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	rec := &wechatRecorder{}
	la := startLoginAgentVia(t, ctx, rec.via)
	const leaked = "leaked0123456789leaked0123456789"
	const form = "application/x-www-form-urlencoded"

	answered := []struct{ method, path, contentType, body string }{
		{"GET", "/cgi-bin/token?grant_type=client_credential&appid=" + loginAppA + "&secret=" + leaked, "", ""},
		{"GET", "/cgi-bin/token?grant_type=client_credential&appid=" + loginAppA + "&secret=&secret=" + leaked, "", ""},
		{"POST", "/cgi-bin/stable_token", "application/json", `{"grant_type":"client_credential","appid":"` + loginAppA + `","secret":"` + leaked + `"}`},
		{"POST", "/app/" + loginAppA + "/cgi-bin/stable_token", "application/json", `{"grant_type":"client_credential","secret":"","secret":"` + leaked + `"}`},
	}
	for _, c := range answered {
		status, answer := la.call(t, ctx, "web", c.method, c.path, c.contentType, c.body)
		if status != http.StatusOK || answer["access_token"] != la.fake.Current(loginAppA) {
			t.Errorf("%s %s %s: %d %v, want the token held", c.method, c.path, c.body, status, answer)
		}
	}
	// The own API answers too.
	if status, answer := la.call(t, ctx, "web", "GET", "/v1/credentials/"+loginAppA+"?appsecret="+leaked, "", ""); status != http.StatusOK || answer["value"] != la.fake.Current(loginAppA) {
		t.Errorf("/v1/credentials with an appsecret: %d %v, want the token held", status, answer)
	}
	refused := []struct{ method, path, contentType, body string }{
		{"GET", "/sns/oauth2/access_token?appid=" + loginAppB + "&grant_type=authorization_code&code=c&secret=&secret=" + leaked, "", ""},
		{"GET", "/sns/userinfo?access_token=t&openid=o&secret=" + leaked, "", ""},
		{"GET", "/app/" + loginAppA + "/cgi-bin/user/get?appsecret=" + leaked, "", ""},
		{"POST", "/app/" + loginAppA + "/cgi-bin/clear_quota/v2", "application/json", `{"appid":"` + loginAppA + `","appsecret":"` + leaked + `"}`},
		{"POST", "/app/" + loginAppA + "/cgi-bin/component/api_component_token", form, "component_appid=wxc&component_appsecret=" + leaked},
		{"POST", "/app/" + loginAppA + "/cgi-bin/message/custom/send", "application/json", `{"touser":"o","corpsecret":"` + leaked + `"}`},
	}
	for _, c := range refused {
		status, answer := la.call(t, ctx, "web", c.method, c.path, c.contentType, c.body)
		msg, _ := answer["errmsg"].(string)
		if status != http.StatusBadRequest || errcode(answer) != 40125 || !strings.HasPrefix(msg, "wxtoken agent: invalid appsecret: send no ") || strings.Contains(msg, leaked) {
			t.Errorf("%s %s %s: %d %v, want the agent's 400 with errcode 40125, without the secret", c.method, c.path, c.body, status, answer)
		}
	}
	// Not a secret: empty ones, and the word elsewhere.
	for _, c := range []struct{ method, path, contentType, body string }{
		{"GET", "/cgi-bin/token?grant_type=client_credential&appid=" + loginAppA + "&secret=", "", ""},
		{"POST", "/cgi-bin/stable_token", "application/json", `{"grant_type":"client_credential","appid":"` + loginAppA + `","secret":""}`},
		{"POST", "/app/" + loginAppA + "/cgi-bin/message/custom/send", "application/json", `{"touser":"o","text":{"content":"secret=not one"}}`},
	} {
		if status, answer := la.call(t, ctx, "web", c.method, c.path, c.contentType, c.body); status != http.StatusOK || errcode(answer) == 40125 {
			t.Errorf("%s %s %s: %d %v, want it answered", c.method, c.path, c.body, status, answer)
		}
	}

	for _, call := range rec.seen() {
		if strings.Contains(call, leaked) || strings.Contains(call, "secret") && !strings.Contains(call, "not one") {
			t.Errorf("WeChat was sent %q", call)
		}
	}
	if n := len(la.fake.LoginCalls()); n != 0 {
		t.Errorf("WeChat saw %d login calls, want none", n)
	}
	want := map[string]float64{"/v1/": 1, "/cgi-bin/token": 2, "/cgi-bin/stable_token": 2, "/sns/oauth2/access_token": 1, "/sns/userinfo": 1, "proxy": 4}
	got := la.secretsCounted(t)
	for path, n := range want {
		if got[path] != n {
			t.Errorf("requests with a secret counted at %s: %v, want %v (all: %v)", path, got[path], n, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("requests with a secret counted: %v, want %v", got, want)
	}

	// One warning per client, path and parameter: the second token call
	// with a secret, and the second proxied call with an appsecret, are
	// counted above but not warned about again. Another client's request
	// ends the lines to read.
	la.call(t, ctx, "shop", "GET", "/cgi-bin/token?grant_type=client_credential&appid="+loginAppA+"&secret="+leaked, "", "")
	var warned []string
	awaitLog(t, ctx, la.records, "warning of shop's secret",
		func(r logRecord) bool { return r.level == slog.LevelWarn && r.attrs["client"] == "shop" },
		func(r logRecord) {
			if r.level != slog.LevelWarn {
				return
			}
			if !strings.HasPrefix(r.msg, "a request carried a secret") || r.attrs["client"] != "web" {
				t.Errorf("a warning: %q %v, want one of a secret web sent", r.msg, r.attrs)
			}
			for _, v := range append([]string{r.msg}, mapValues(r.attrs)...) {
				if strings.Contains(v, leaked) {
					t.Errorf("the warning shows the secret: %q %v", r.msg, r.attrs)
				}
			}
			warned = append(warned, r.attrs["path"]+" "+r.attrs["parameter"]+" in "+r.attrs["in"])
		})
	wantWarned := []string{
		"/cgi-bin/token secret in query", "/cgi-bin/stable_token secret in body", "/v1/credentials/" + loginAppA + " appsecret in query",
		"/sns/oauth2/access_token secret in query", "/sns/userinfo secret in query",
		"/cgi-bin/user/get appsecret in query", "/cgi-bin/component/api_component_token component_appsecret in body",
		"/cgi-bin/message/custom/send corpsecret in body",
	}
	if strings.Join(warned, "\n") != strings.Join(wantWarned, "\n") {
		t.Errorf("warned of:\n%s\nwant:\n%s", strings.Join(warned, "\n"), strings.Join(wantWarned, "\n"))
	}
}

// TestASecretIsFoundUnderEachNameAndEncoding: a query's secret in any of
// its values or escaped, a JSON body's however often or escaped its name,
// a form's; not an empty one, nor a field of the call's own.
func TestASecretIsFoundUnderEachNameAndEncoding(t *testing.T) {
	for _, tc := range []struct {
		body string
		want string
	}{
		{`{"appid":"wx","secret":"x"}`, "secret"},
		{`{"secret":"","secret":"x"}`, "secret"},
		{`{"secret":"x","secret":""}`, "secret"},
		{`{"\u0073ecret":"x"}`, "secret"},
		{`{"secret":null,"appsecret":""}`, ""},
		{`{"data":{"secret":"x"}}`, ""}, // a field of the call's own, not WeChat's parameter
		{`not json`, ""},
		{`{"component_appsecret":12}`, "component_appsecret"},
	} {
		if got := jsonSecret([]byte(tc.body)); got != tc.want {
			t.Errorf("jsonSecret(%s) = %q, want %q", tc.body, got, tc.want)
		}
	}
	for _, tc := range []struct{ query, want string }{
		{"appid=wx&secret=x", "secret"},
		{"secret=&secret=x", "secret"},
		{"s%65cret=x", "secret"},
		{"corpsecret=x", "corpsecret"},
		{"secret=", ""},
		{"appid=wx", ""},
	} {
		if got := querySecret(tc.query); got != tc.want {
			t.Errorf("querySecret(%q) = %q, want %q", tc.query, got, tc.want)
		}
	}
	if got := bodySecret("application/x-www-form-urlencoded; charset=utf-8", []byte("a=1&appsecret=x")); got != "appsecret" {
		t.Errorf("a form's appsecret: %q", got)
	}
}
