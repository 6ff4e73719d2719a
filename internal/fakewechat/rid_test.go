package fakewechat

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

var ridForm = regexp.MustCompile(` rid: ([0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8})$`)

// ridOf is the rid an error answer's errmsg ends in.
func ridOf(t *testing.T, answer map[string]any) string {
	t.Helper()
	msg, _ := answer["errmsg"].(string)
	m := ridForm.FindStringSubmatch(msg)
	if code(answer) == 0 || m == nil {
		t.Fatalf("answer %v: want an error whose errmsg ends in a rid", answer)
	}
	return m[1]
}

// ridGet is rid/get's answer for rid, asked with token.
func ridGet(t *testing.T, base, token, rid string) map[string]any {
	t.Helper()
	return wx(t, http.DefaultClient, http.MethodPost, base+PathRidGet+"?access_token="+token, map[string]string{"rid": rid})
}

func TestRidGetShowsTheAccountItsFailedRequestsForSevenDays(t *testing.T) {
	s, c, base := quotaFake(t, Config{})
	s.AddApp("wx00000000000000q2", "other-secret")
	token, _ := fetch(t, http.DefaultClient, base)
	other := wx(t, http.DefaultClient, http.MethodGet, base+"/cgi-bin/token?grant_type=client_credential&appid=wx00000000000000q2&secret=other-secret", nil)["access_token"].(string)

	const wrong = "a-wrong-secret-never-echoed"
	byQuery := ridOf(t, wx(t, clientFrom("127.0.0.2"), http.MethodGet, base+"/cgi-bin/token?"+url.Values{"grant_type": {"client_credential"},
		"appid": {quotaApp}, "secret": {wrong}}.Encode(), nil))
	byBody := ridOf(t, wx(t, http.DefaultClient, http.MethodPost, base+PathStableToken,
		map[string]any{"grant_type": "client_credential", "appid": quotaApp, "secret": wrong}))
	invoked := c.Now().Unix()

	got := ridGet(t, base, token, byQuery)
	req, ok := got["request"].(map[string]any)
	if !ok {
		t.Fatalf("rid/get: %v", got)
	}
	if req["client_ip"] != "127.0.0.2" || int64(req["invoke_time"].(float64)) != invoked || req["cost_in_ms"] == nil {
		t.Errorf("request %v: want client_ip 127.0.0.2, invoke_time %d, a cost", req, invoked)
	}
	if u := req["request_url"].(string); !strings.HasPrefix(u, "/cgi-bin/token?") || !strings.Contains(u, "secret=REDACTED") {
		t.Errorf("request_url %q: want the token path with its secret replaced", u)
	}
	if body := req["response_body"].(string); !strings.Contains(body, "40125") || !strings.Contains(body, byQuery) {
		t.Errorf("response_body %q: want the 40125 answer with its rid", body)
	}
	req = ridGet(t, base, token, byBody)["request"].(map[string]any)
	if body := req["request_body"].(string); !strings.Contains(body, `"secret":"REDACTED"`) || !strings.Contains(body, quotaApp) {
		t.Errorf("request_body %q: want the body with its secret replaced", body)
	}
	for rid := range map[string]bool{byQuery: true, byBody: true} {
		s.mu.Lock()
		kept := *s.rids[rid]
		s.mu.Unlock()
		if strings.Contains(kept.url+kept.body+kept.answer, wrong) {
			t.Errorf("rid %s keeps the secret: %+v", rid, kept)
		}
	}

	if got := code(ridGet(t, base, other, byQuery)); got != 76001 {
		t.Errorf("another account's rid: errcode %d, want 76001", got)
	}
	if got := code(ridGet(t, base, token, "00000000-00000000-00000000")); got != 76001 {
		t.Errorf("an unknown rid: errcode %d, want 76001", got)
	}
	c.advance(7*24*time.Hour - time.Second)
	token, _ = fetch(t, http.DefaultClient, base)
	if got := code(ridGet(t, base, token, byQuery)); got != 0 {
		t.Errorf("a rid a second before its 7 days end: errcode %d, want it answered", got)
	}
	c.advance(time.Second)
	if got := code(ridGet(t, base, token, byQuery)); got != 76001 {
		t.Errorf("a rid 7 days old: errcode %d, want 76001", got)
	}
}

func TestEveryErrorCarriesItsOwnRid(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	s.Inject(quotaApp, Fault{ErrCode: -1})
	answers := []map[string]any{
		wx(t, http.DefaultClient, http.MethodGet, base+"/cgi-bin/token?grant_type=client_credential&appid="+quotaApp+"&secret="+quotaSecret, nil), // the fault
		wx(t, http.DefaultClient, http.MethodGet, base+"/cgi-bin/no/such/api", nil),
		wx(t, http.DefaultClient, http.MethodGet, base+PathUserList+"?access_token=dead", nil),
		quotaGet(t, base, "dead", PathToken),
	}
	seen := map[string]bool{}
	for _, a := range answers {
		rid := ridOf(t, a)
		if seen[rid] {
			t.Errorf("rid %s given twice", rid)
		}
		seen[rid] = true
	}
	for i := range 1000 {
		_, rid, _ := strings.Cut(errReply(-1, "")["errmsg"].(string), " rid: ")
		if seen[rid] {
			t.Fatalf("rid %s given twice, after %d", rid, i)
		}
		seen[rid] = true
	}
}

func TestRidGetDoesNotAnswerForSnsAPIs(t *testing.T) {
	_, _, base := quotaFake(t, Config{})
	token, _ := fetch(t, http.DefaultClient, base)
	rid := ridOf(t, wx(t, http.DefaultClient, http.MethodGet, base+PathJSCode2Session+"?"+url.Values{"appid": {quotaApp},
		"secret": {quotaSecret}, "js_code": {"no-such-code"}, "grant_type": {"authorization_code"}}.Encode(), nil))
	if got := code(ridGet(t, base, token, rid)); got != 76001 {
		t.Errorf("rid/get of a /sns/ error: errcode %d, want 76001", got)
	}
}
