package fakewechat

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// call answers one request to the fake, decoded.
func call(t *testing.T, s *Server, method, path string, query url.Values, body map[string]any) answer {
	t.Helper()
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(method, path+"?"+query.Encode(), bytes.NewReader(data)))
	var a answer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("%s: undecodable answer %q", path, rec.Body.Bytes())
	}
	return a
}

// tokenCalls are an app's two token APIs with secret.
func tokenCalls(t *testing.T, s *Server, appid, secret string) map[string]answer {
	t.Helper()
	return map[string]answer{
		"token": call(t, s, http.MethodGet, "/cgi-bin/token", url.Values{"grant_type": {"client_credential"}, "appid": {appid}, "secret": {secret}}, nil),
		"stable_token": call(t, s, http.MethodPost, "/cgi-bin/stable_token", nil,
			map[string]any{"grant_type": "client_credential", "appid": appid, "secret": secret}),
	}
}

func TestResetSecretRefusesTheOldOneAtOnceAndKeepsIssuedTokens(t *testing.T) {
	s := New(Config{})
	const appid = "wx1234567890abcdef"
	s.AddApp(appid, "old-secret")
	issued := s.Issue(appid)
	secret, err := s.ResetSecret(appid)
	if err != nil {
		t.Fatal(err)
	}
	if secret == "old-secret" || len(secret) != 32 {
		t.Fatalf("new secret %q: want 32 new hex digits", secret)
	}
	for api, a := range tokenCalls(t, s, appid, "old-secret") {
		if a.ErrCode != 40125 {
			t.Errorf("%s with the old secret: errcode %d, want 40125", api, a.ErrCode)
		}
	}
	for api, a := range tokenCalls(t, s, appid, secret) {
		if a.ErrCode != 0 || a.AccessToken == "" {
			t.Errorf("%s with the new secret: errcode %d, token %q; want a token", api, a.ErrCode, a.AccessToken)
		}
	}
	// The token before the reset was replaced by the classic call just
	// made, and works through its overlap: the reset ended nothing.
	if ok, code := s.Valid(issued); !ok {
		t.Errorf("the token issued before the reset: errcode %d, want still valid", code)
	}
	if _, err := s.ResetSecret("wxunknown000000000"); err == nil {
		t.Error("ResetSecret of an unknown app: no error")
	}
}

func TestFrozenSecretGets40243UntilUnfrozen(t *testing.T) {
	s := New(Config{})
	const appid = "wx1234567890abcdef"
	s.AddApp(appid, "secret")
	if err := s.Freeze(appid); err != nil {
		t.Fatal(err)
	}
	for api, a := range tokenCalls(t, s, appid, "secret") {
		if a.ErrCode != 40243 {
			t.Errorf("%s while frozen: errcode %d, want 40243", api, a.ErrCode)
		}
	}
	for api, a := range tokenCalls(t, s, appid, "wrong") {
		if a.ErrCode != 40125 {
			t.Errorf("%s with a wrong secret while frozen: errcode %d, want 40125", api, a.ErrCode)
		}
	}
	if err := s.Unfreeze(appid); err != nil {
		t.Fatal(err)
	}
	for api, a := range tokenCalls(t, s, appid, "secret") {
		if a.ErrCode != 0 || a.AccessToken == "" {
			t.Errorf("%s once unfrozen: errcode %d, want a token", api, a.ErrCode)
		}
	}
	if err := s.Freeze("wxunknown000000000"); err == nil {
		t.Error("Freeze of an unknown app: no error")
	}
}

func TestResetSecretOfAPlatformAndOfAWeComApp(t *testing.T) {
	s := New(Config{})
	const component = "wx0123456789abcdef"
	if err := s.AddPlatform(component, "old-secret", "token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"); err != nil {
		t.Fatal(err)
	}
	s.AddWeComApp("ww1234567890abcdef", "1000002", "old-corpsecret")
	secret, err := s.ResetSecret(component)
	if err != nil {
		t.Fatal(err)
	}
	push := func(secret string) answer {
		return call(t, s, http.MethodPost, PathStartPush, nil, map[string]any{"component_appid": component, "component_secret": secret})
	}
	if a := push("old-secret"); a.ErrCode != 40125 {
		t.Errorf("api_start_push_ticket with the old secret: errcode %d, want 40125", a.ErrCode)
	}
	if a := push(secret); a.ErrCode != 0 {
		t.Errorf("api_start_push_ticket with the new secret: errcode %d, want 0", a.ErrCode)
	}

	corpSecret, err := s.ResetSecret("ww1234567890abcdef-1000002")
	if err != nil {
		t.Fatal(err)
	}
	gettoken := func(secret string) answer {
		return call(t, s, http.MethodGet, "/cgi-bin/gettoken", url.Values{"corpid": {"ww1234567890abcdef"}, "corpsecret": {secret}}, nil)
	}
	if a := gettoken("old-corpsecret"); a.ErrCode != 40001 {
		t.Errorf("gettoken with the old secret: errcode %d, want 40001", a.ErrCode)
	}
	if a := gettoken(corpSecret); a.ErrCode != 0 || a.AccessToken == "" {
		t.Errorf("gettoken with the new secret: errcode %d, want a token", a.ErrCode)
	}
}
