package fakewechat

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/wxcrypt"
)

const quotaApp, quotaSecret = "wx00000000000000q1", "quota-secret"

// quotaFake is a fake on a real listener whose clock starts at 15:00 China
// time on 1 December 2026, with one app.
func quotaFake(t *testing.T, cfg Config) (*Server, *clock, string) {
	t.Helper()
	c := &clock{now: time.Date(2026, 12, 1, 15, 0, 0, 0, chinaTime)}
	cfg.Now = c.Now
	s := New(cfg)
	s.AddApp(quotaApp, quotaSecret)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, c, srv.URL
}

// wx is one call to the fake by client c, decoded; a JSON body when body
// is not nil.
func wx(t *testing.T, c *http.Client, method, u string, body any) map[string]any {
	t.Helper()
	var data string
	if body != nil {
		b, _ := json.Marshal(body)
		data = string(b)
	}
	req, err := http.NewRequest(method, u, strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("%s %s: undecodable answer: %v", method, u, err)
	}
	return v
}

func code(answer map[string]any) int {
	n, _ := answer["errcode"].(float64)
	return int(n)
}

// fetch gets a classic token for quotaApp with client c: the token, or ""
// and the answer's errcode.
func fetch(t *testing.T, c *http.Client, base string) (string, int) {
	t.Helper()
	a := wx(t, c, http.MethodGet, base+"/cgi-bin/token?"+url.Values{"grant_type": {"client_credential"},
		"appid": {quotaApp}, "secret": {quotaSecret}}.Encode(), nil)
	token, _ := a["access_token"].(string)
	return token, code(a)
}

// quotaGet is quota/get's answer for path, asked with token.
func quotaGet(t *testing.T, base, token, path string) map[string]any {
	t.Helper()
	return wx(t, http.DefaultClient, http.MethodPost, base+PathQuotaGet+"?access_token="+token, map[string]string{"cgi_path": path})
}

// quotaOf is quota/get's {daily_limit, used, remain} for path.
func quotaOf(t *testing.T, base, token, path string) (limit, used, remain int) {
	t.Helper()
	a := quotaGet(t, base, token, path)
	q, ok := a["quota"].(map[string]any)
	if !ok {
		t.Fatalf("quota/get %s: %v", path, a)
	}
	return int(q["daily_limit"].(float64)), int(q["used"].(float64)), int(q["remain"].(float64))
}

func TestQuotaGetCountsEveryClientsServedCallsPerPath(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	ours, foreign := &http.Client{}, &http.Client{Transport: &http.Transport{}} // a second system with the secret
	fetch(t, ours, base)
	fetch(t, foreign, base)
	token, _ := fetch(t, ours, base)
	wx(t, ours, http.MethodGet, base+"/cgi-bin/token?grant_type=client_credential&appid="+quotaApp+"&secret=wrong", nil)
	wx(t, foreign, http.MethodPost, base+PathStableToken, map[string]any{"grant_type": "client_credential", "appid": quotaApp, "secret": quotaSecret})
	for range 2 {
		wx(t, ours, http.MethodGet, base+PathGetTicket+"?type=jsapi&access_token="+token, nil)
	}
	wx(t, ours, http.MethodPost, base+PathSendMessage+"?access_token="+token, map[string]string{"touser": "o1"})

	for _, tc := range []struct {
		path        string
		limit, used int
	}{
		{PathToken, 2000, 3}, // the wrong secret's call was not served
		{PathStableToken, 500000, 1},
		{PathGetTicket, 100000, 2},
		{PathSendMessage, 100000, 1},
		{PathUploadMedia, 100000, 0},
	} {
		limit, used, remain := quotaOf(t, base, token, tc.path)
		if limit != tc.limit || used != tc.used || remain != tc.limit-tc.used {
			t.Errorf("quota/get %s = limit %d, used %d, remain %d; want %d, %d, %d", tc.path, limit, used, remain, tc.limit, tc.used, tc.limit-tc.used)
		}
		if got := s.QuotaUsed(quotaApp, tc.path); got != tc.used {
			t.Errorf("QuotaUsed(%s) = %d, want %d", tc.path, got, tc.used)
		}
	}
	if got := s.QuotaUsed(quotaApp, PathQuotaGet); got != 5 {
		t.Errorf("quota/get itself: used %d, want the 5 calls made", got)
	}
}

func TestQuotaGetRefusesWhatItCannotAnswer(t *testing.T) {
	s, c, base := quotaFake(t, Config{})
	token, _ := fetch(t, http.DefaultClient, base)
	if err := s.AddPlatform(platformApp, "component-secret", platformToken, platformKey); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	component := s.issue(platformApp, s.app(platformApp), c.Now()).value
	s.mu.Unlock()

	for _, tc := range []struct {
		name, token, path string
		want              int
	}{
		{"no leading slash", token, "cgi-bin/token", 76003},
		{"a /sns/ path", token, PathJSCode2Session, 76022},
		{"a path the fake does not serve", token, "/cgi-bin/nothing/here", 76021},
		{"a component path asked with an account's token", token, PathComponentToken, 76022},
		{"an account's path asked with a component token", component, PathToken, 76022},
		{"a dead token", "not-a-token", PathToken, 40001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := code(quotaGet(t, base, tc.token, tc.path)); got != tc.want {
				t.Errorf("errcode %d, want %d", got, tc.want)
			}
		})
	}
	if limit, used, _ := quotaOf(t, base, component, PathComponentToken); limit != 2000 || used != 0 {
		t.Errorf("the component token's quota: limit %d, used %d; want 2000, 0", limit, used)
	}
}

func TestADailyLimitEndsIn45009UntilMidnightChinaTime(t *testing.T) {
	s, c, base := quotaFake(t, Config{})
	s.SetQuotaLimit(quotaApp, PathToken, 2)
	s.SetQuotaLimit(quotaApp, PathStableToken, 1)
	stable := map[string]any{"grant_type": "client_credential", "appid": quotaApp, "secret": quotaSecret}
	for i := range 2 {
		if _, errcode := fetch(t, http.DefaultClient, base); errcode != 0 {
			t.Fatalf("fetch %d within the limit: errcode %d", i+1, errcode)
		}
	}
	if code(wx(t, http.DefaultClient, http.MethodPost, base+PathStableToken, stable)) != 0 {
		t.Fatal("stable_token within its own limit was refused")
	}
	c.advance(8*time.Hour + 59*time.Minute + 59*time.Second) // 23:59:59 China time
	if _, errcode := fetch(t, http.DefaultClient, base); errcode != 45009 {
		t.Errorf("a fetch past the limit at 23:59:59: errcode %d, want 45009", errcode)
	}
	if got := code(wx(t, http.DefaultClient, http.MethodPost, base+PathStableToken, stable)); got != 45009 {
		t.Errorf("stable_token past its limit: errcode %d, want 45009", got)
	}
	if got := s.QuotaUsed(quotaApp, PathToken); got != 2 {
		t.Errorf("used %d after a refused fetch, want 2: a refused call is not served", got)
	}
	c.advance(time.Second) // 00:00 China time, 16:00 UTC
	if _, errcode := fetch(t, http.DefaultClient, base); errcode != 0 {
		t.Errorf("a fetch at 00:00 China time: errcode %d, want a token", errcode)
	}
	if got := s.QuotaUsed(quotaApp, PathToken); got != 1 {
		t.Errorf("used %d on the new day, want 1", got)
	}
}

func TestATestAccountGets200TokensADay(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	s.SetQuotaLimit(quotaApp, PathToken, TestAccountTokenLimit)
	var token string
	for i := range TestAccountTokenLimit {
		var errcode int
		if token, errcode = fetch(t, http.DefaultClient, base); errcode != 0 {
			t.Fatalf("fetch %d: errcode %d", i+1, errcode)
		}
	}
	if _, errcode := fetch(t, http.DefaultClient, base); errcode != 45009 {
		t.Errorf("fetch 201: errcode %d, want 45009", errcode)
	}
	if limit, used, remain := quotaOf(t, base, token, PathToken); limit != 200 || used != 200 || remain != 0 {
		t.Errorf("quota/get = %d, %d, %d; want 200, 200, 0", limit, used, remain)
	}
}

func TestQuotaGetSkewsUsedByAtMostOnePercent(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	for range 200 {
		fetch(t, http.DefaultClient, base)
	}
	if err := s.SetQuotaSkew(quotaApp, 0.02); err == nil {
		t.Error("a skew of 2% was taken, want an error: WeChat says within 1%")
	}
	for _, tc := range []struct {
		skew       float64
		used, seen int // each round fetches one more
	}{{0.01, 201, 203}, {-0.01, 202, 200}, {0, 203, 203}} {
		if err := s.SetQuotaSkew(quotaApp, tc.skew); err != nil {
			t.Fatal(err)
		}
		token, _ := fetch(t, http.DefaultClient, base)
		if got := s.QuotaUsed(quotaApp, PathToken); got != tc.used {
			t.Fatalf("QuotaUsed = %d, want the true %d", got, tc.used)
		}
		if _, seen, remain := quotaOf(t, base, token, PathToken); seen != tc.seen || remain != 2000-tc.seen {
			t.Errorf("skew %g: quota/get used %d, remain %d; want %d, %d", tc.skew, seen, remain, tc.seen, 2000-tc.seen)
		}
	}
}

func TestAnAuthorizerTokenIsCountedAgainstThePlatform(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, base := quotaFake(t, Config{})
	if err := s.AddPlatform(platformApp, "component-secret", platformToken, platformKey); err != nil {
		t.Fatal(err)
	}
	c, _ := wxcrypt.New(platformToken, platformKey, platformApp)
	cb := &callback{c: c}
	hook := httptest.NewServer(cb)
	defer hook.Close()
	ticket, _, err := s.PushTicket(ctx, hook.URL, platformApp)
	if err != nil {
		t.Fatal(err)
	}
	component, _ := post(t, base, PathComponentToken, map[string]string{"component_appid": platformApp,
		"component_appsecret": "component-secret", "component_verify_ticket": ticket})["component_access_token"].(string)
	refresh, err := s.GrantRefreshToken(platformApp, authorizerApp)
	if err != nil {
		t.Fatal(err)
	}
	got := post(t, base, PathAuthorizerTok+"?component_access_token="+component, map[string]string{"component_appid": platformApp,
		"authorizer_appid": authorizerApp, "authorizer_refresh_token": refresh})
	if got["authorizer_access_token"] == nil {
		t.Fatalf("authorizer token: %v", got)
	}
	if mine, theirs := s.QuotaUsed(platformApp, PathAuthorizerTok), s.QuotaUsed(authorizerApp, PathAuthorizerTok); mine != 1 || theirs != 0 {
		t.Errorf("api_authorizer_token counted %d against the platform, %d against the authorizer; want 1, 0", mine, theirs)
	}
	if _, used, _ := quotaOf(t, base, component, PathAuthorizerTok); used != 1 {
		t.Errorf("quota/get with the component token: used %d, want 1", used)
	}
	if _, used, _ := quotaOf(t, base, component, PathComponentToken); used != 1 {
		t.Errorf("component token: used %d, want 1", used)
	}
	if _, err := s.Authorize(ctx, hook.URL, platformApp, "wx00000000000a0002"); err != nil {
		t.Fatal(err)
	}
	post(t, base, PathQueryAuth+"?component_access_token="+component,
		map[string]string{"component_appid": platformApp, "authorization_code": cb.got()[1].Code})
	if mine, theirs := s.QuotaUsed(platformApp, PathQueryAuth), s.QuotaUsed("wx00000000000a0002", PathQueryAuth); mine != 1 || theirs != 0 {
		t.Errorf("api_query_auth counted %d against the platform, %d against the authorizer; want 1, 0", mine, theirs)
	}
}
