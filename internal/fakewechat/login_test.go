package fakewechat

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// login calls path of the fake with q and returns its answer.
func login(t *testing.T, s *Server, path string, q url.Values) map[string]any {
	t.Helper()
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path+"?"+q.Encode(), nil))
	var answer map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil {
		t.Fatalf("%s: %v: %s", path, err, w.Body)
	}
	return answer
}

func errcodeOf(answer map[string]any) int {
	code, _ := answer["errcode"].(float64)
	return int(code)
}

func TestALoginCodeWorksOnceWithinFiveMinutesAndWithTheSecret(t *testing.T) {
	const app, secret = "wx00000000000010a1", "the-secret"
	c := &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	s := New(Config{Now: c.Now})
	s.AddApp(app, secret)
	q := func(code, secret string) url.Values {
		return url.Values{"appid": {app}, "secret": {secret}, "js_code": {code}, "grant_type": {"authorization_code"}}
	}

	code := s.LoginCode(app, "alice")
	if got := errcodeOf(login(t, s, PathJSCode2Session, q(code, "wrong"))); got != 40125 {
		t.Errorf("a wrong secret: errcode %d, want 40125", got)
	}
	answer := login(t, s, PathJSCode2Session, q(code, secret))
	if answer["openid"] != OpenID(app, "alice") || answer["unionid"] != UnionID("alice") || answer["session_key"] == "" || errcodeOf(answer) != 0 {
		t.Errorf("the exchange: %v", answer)
	}
	if got := errcodeOf(login(t, s, PathJSCode2Session, q(code, secret))); got != 40163 {
		t.Errorf("the code again: errcode %d, want 40163", got)
	}
	if got := errcodeOf(login(t, s, PathJSCode2Session, q("no-such-code", secret))); got != 40029 {
		t.Errorf("an unknown code: errcode %d, want 40029", got)
	}
	late := s.LoginCode(app, "bob")
	c.advance(5 * time.Minute)
	if got := errcodeOf(login(t, s, PathJSCode2Session, q(late, secret))); got != 40029 {
		t.Errorf("a code 5 minutes old: errcode %d, want 40029", got)
	}
	web := s.OAuthCode(app, "carol", "snsapi_base")
	if got := errcodeOf(login(t, s, PathJSCode2Session, q(web, secret))); got != 40029 {
		t.Errorf("a web page's code at jscode2session: errcode %d, want 40029", got)
	}

	calls := s.LoginCalls()
	if len(calls) != 6 || calls[0].Code != code || !calls[0].Secret || calls[0].ErrCode != 40125 || calls[1].ErrCode != 0 || calls[0].From != "192.0.2.1" {
		t.Errorf("the calls seen: %+v", calls)
	}
}

func TestAWebLoginRenewsWithItsRefreshTokenAndNoSecret(t *testing.T) {
	const app, secret = "wx00000000000010a2", "the-secret"
	c := &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	s := New(Config{Now: c.Now})
	s.AddApp(app, secret)

	code := s.OAuthCode(app, "dave", "snsapi_userinfo")
	answer := login(t, s, PathOAuthAccessToken, url.Values{"appid": {app}, "secret": {secret}, "code": {code}, "grant_type": {"authorization_code"}})
	refresh, _ := answer["refresh_token"].(string)
	if refresh == "" || answer["access_token"] == "" || answer["openid"] != OpenID(app, "dave") || answer["scope"] != "snsapi_userinfo" {
		t.Fatalf("the exchange: %v", answer)
	}
	user := url.Values{"access_token": {answer["access_token"].(string)}, "openid": {OpenID(app, "dave")}}
	if profile := login(t, s, PathUserInfo, user); profile["nickname"] != "dave" {
		t.Errorf("the user's profile with the user's token: %v", profile)
	}
	user.Set("access_token", "forged")
	if got := errcodeOf(login(t, s, PathUserInfo, user)); got != 40001 {
		t.Errorf("the user's profile with a forged token: errcode %d, want 40001", got)
	}
	renew := url.Values{"appid": {app}, "grant_type": {"refresh_token"}, "refresh_token": {refresh}}
	c.advance(29 * 24 * time.Hour)
	if answer := login(t, s, PathOAuthRefreshToken, renew); answer["access_token"] == "" || answer["refresh_token"] != refresh {
		t.Errorf("a renewal on day 29: %v", answer)
	}
	if calls := s.LoginCalls(); calls[len(calls)-1].Secret {
		t.Error("the renewal recorded a secret it was not sent")
	}
	c.advance(24 * time.Hour)
	if got := errcodeOf(login(t, s, PathOAuthRefreshToken, renew)); got != 42002 {
		t.Errorf("a renewal after 30 days: errcode %d, want 42002", got)
	}
	renew.Set("refresh_token", "forged")
	if got := errcodeOf(login(t, s, PathOAuthRefreshToken, renew)); got != 40030 {
		t.Errorf("a forged refresh token: errcode %d, want 40030", got)
	}
}

func TestAComponentLoginNeedsThePlatformsTokenAndAnAuthorizedAccount(t *testing.T) {
	s := New(Config{})
	if err := s.AddPlatform(platformApp, "component-secret", platformToken, platformKey); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.platforms[platformApp].authorized[authorizerApp] = true
	token := s.issue(platformApp, s.app(platformApp), s.cfg.Now()).value
	s.mu.Unlock()
	q := func(appid, code, token string) url.Values {
		return url.Values{"appid": {appid}, "js_code": {code}, "grant_type": {"authorization_code"},
			"component_appid": {platformApp}, "component_access_token": {token}}
	}

	code := s.LoginCode(authorizerApp, "erin")
	if got := errcodeOf(login(t, s, PathComponentJSCode2Session, q(authorizerApp, code, "not-the-token"))); got != 40001 {
		t.Errorf("a wrong component token: errcode %d, want 40001", got)
	}
	if answer := login(t, s, PathComponentJSCode2Session, q(authorizerApp, code, token)); answer["openid"] != OpenID(authorizerApp, "erin") {
		t.Errorf("the exchange: %v", answer)
	}
	const other = "wx00000000000a0002"
	if got := errcodeOf(login(t, s, PathComponentJSCode2Session, q(other, s.LoginCode(other, "erin"), token))); got != 61003 {
		t.Errorf("an account that did not authorize the platform: errcode %d, want 61003", got)
	}
	if calls := s.LoginCalls(); !calls[1].ComponentToken || calls[1].Secret {
		t.Errorf("the call seen: %+v", calls[1])
	}
}

// TestTheLoginExchangesAreGuardedAsTheSecretIs: jscode2session and
// oauth2/access_token take the AppSecret, so a mini program's whitelist
// guards them (40164 naming the address), a frozen secret gets 40243 and
// the secret of before a reset 40125; none of these uses up the code. The
// renewal, which takes no secret, is not guarded by a mini program's
// whitelist.
func TestTheLoginExchangesAreGuardedAsTheSecretIs(t *testing.T) {
	const app, secret = "wx00000000000010a3", "the-secret"
	s := New(Config{})
	s.AddApp(app, secret)
	s.SetWhitelist(app, Whitelist{Allowed: []string{"127.0.0.2"}})
	srv := httptest.NewServer(s)
	defer srv.Close()
	good, bad := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	exchange := func(c *http.Client, path, codeParam, code, secret string) (int, string) {
		t.Helper()
		q := url.Values{"appid": {app}, "secret": {secret}, codeParam: {code}, "grant_type": {"authorization_code"}}
		resp, err := c.Get(srv.URL + path + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var answer struct {
			ErrCode int    `json:"errcode"`
			ErrMsg  string `json:"errmsg"`
			OpenID  string `json:"openid"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			t.Fatal(err)
		}
		if answer.ErrCode == 0 && answer.OpenID != OpenID(app, "frank") {
			t.Fatalf("%s: neither frank's openid nor an errcode: %+v", path, answer)
		}
		return answer.ErrCode, answer.ErrMsg
	}

	mini, web := s.LoginCode(app, "frank"), s.OAuthCode(app, "frank", "snsapi_base")
	for _, c := range []struct{ path, param, code string }{{PathJSCode2Session, "js_code", mini}, {PathOAuthAccessToken, "code", web}} {
		code, msg := exchange(bad, c.path, c.param, c.code, secret)
		if code != 40164 || !strings.HasPrefix(msg, "invalid ip 127.0.0.3 ipv6 ::ffff:127.0.0.3, not in whitelist") {
			t.Errorf("%s from 127.0.0.3: errcode %d %q, want 40164 naming the address", c.path, code, msg)
		}
	}
	renew := url.Values{"appid": {app}, "grant_type": {"refresh_token"}, "refresh_token": {"none-such"}}
	if resp, err := bad.Get(srv.URL + PathOAuthRefreshToken + "?" + renew.Encode()); err != nil {
		t.Fatal(err)
	} else {
		var answer struct{ ErrCode int }
		json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if answer.ErrCode != 40030 {
			t.Errorf("a renewal from 127.0.0.3: errcode %d, want 40030 (the refresh token's, not the whitelist's)", answer.ErrCode)
		}
	}

	s.Freeze(app)
	if code, _ := exchange(good, PathJSCode2Session, "js_code", mini, secret); code != 40243 {
		t.Errorf("jscode2session with a frozen secret: errcode %d, want 40243", code)
	}
	if code, _ := exchange(good, PathOAuthAccessToken, "code", web, secret); code != 40243 {
		t.Errorf("oauth2/access_token with a frozen secret: errcode %d, want 40243", code)
	}
	s.Unfreeze(app)
	fresh, err := s.ResetSecret(app)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := exchange(good, PathJSCode2Session, "js_code", mini, secret); code != 40125 {
		t.Errorf("jscode2session with the secret of before the reset: errcode %d, want 40125", code)
	}
	if code, msg := exchange(good, PathJSCode2Session, "js_code", mini, fresh); code != 0 {
		t.Errorf("the code, refused until now, with the new secret from 127.0.0.2: errcode %d %s, want frank's session", code, msg)
	}
}
