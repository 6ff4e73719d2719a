package fakewechat

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// clientFrom is an HTTP client whose calls go out from the local address ip.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// whitelistAnswer is the errcode and errmsg of a call, 0 for a token.
func whitelistAnswer(t *testing.T, c *http.Client, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
		Token   string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.ErrCode == 0 && got.Token == "" {
		t.Fatalf("%s %s: neither a token nor an errcode", method, url)
	}
	return got.ErrCode, got.ErrMsg
}

func TestWhitelistRefusesOtherAddressesNamingThem(t *testing.T) {
	const appid, mini = "wxwhite00000000000", "wxmini000000000000"
	s := New(Config{})
	s.AddApp(appid, "secret")
	s.AddApp(mini, "secret")
	srv := httptest.NewServer(s)
	defer srv.Close()
	token := srv.URL + "/cgi-bin/token?grant_type=client_credential&appid=" + appid + "&secret=secret"
	stable := `{"grant_type":"client_credential","appid":"` + appid + `","secret":"secret"}`
	good, bad, awaiting := clientFrom("127.0.0.2"), clientFrom("127.0.0.3"), clientFrom("127.0.0.4")

	if code, _ := whitelistAnswer(t, bad, http.MethodGet, token, ""); code != 0 {
		t.Fatalf("no whitelist: errcode %d, want a token from any address", code)
	}
	s.SetWhitelist(appid, Whitelist{Allowed: []string{"127.0.0.2", "10.0.0.0/8"}, Awaiting: []string{"127.0.0.4"}, EveryAPI: true})
	s.SetWhitelist(mini, Whitelist{Allowed: []string{"127.0.0.2"}})
	if code, msg := whitelistAnswer(t, good, http.MethodGet, token, ""); code != 0 {
		t.Errorf("a whitelisted address: errcode %d %s, want a token", code, msg)
	}
	for _, call := range []struct{ method, url, body string }{
		{http.MethodGet, token, ""},
		{http.MethodPost, srv.URL + "/cgi-bin/stable_token", stable},
	} {
		code, msg := whitelistAnswer(t, bad, call.method, call.url, call.body)
		if code != 40164 || !strings.HasPrefix(msg, "invalid ip 127.0.0.3 ipv6 ::ffff:127.0.0.3, not in whitelist rid: ") {
			t.Errorf("%s from 127.0.0.3: errcode %d %q, want 40164 naming the address", call.url, code, msg)
		}
	}
	if code, _ := whitelistAnswer(t, awaiting, http.MethodGet, token, ""); code != 89503 {
		t.Errorf("an address awaiting confirmation: errcode %d, want 89503", code)
	}

	// An official account's whitelist guards every API; a mini program's,
	// only those that take the AppSecret.
	accountToken, miniToken := s.Issue(appid), s.Issue(mini)
	if code, _ := whitelistAnswer(t, bad, http.MethodGet, srv.URL+"/cgi-bin/getcallbackip?access_token="+accountToken, ""); code != 40164 {
		t.Errorf("an official account's API from 127.0.0.3: errcode %d, want 40164", code)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/cgi-bin/getcallbackip?access_token="+miniToken, nil)
	resp, err := bad.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ips struct {
		IPList []string `json:"ip_list"`
	}
	json.NewDecoder(resp.Body).Decode(&ips)
	resp.Body.Close()
	if len(ips.IPList) == 0 {
		t.Error("a mini program's token API from 127.0.0.3 was refused: its whitelist guards only the AppSecret APIs")
	}
}

// TestWhitelistGuardsTheLoginExchanges: a code exchanged with the secret
// from an address the whitelist lacks gets 40164 and is not spent (WeChat
// refuses the call before it looks at the code); from a whitelisted one it
// logs the user in.
func TestWhitelistGuardsTheLoginExchanges(t *testing.T) {
	const mini = "wxmini000000000000"
	s := New(Config{})
	s.AddApp(mini, "secret")
	s.SetWhitelist(mini, Whitelist{Allowed: []string{"127.0.0.2"}})
	srv := httptest.NewServer(s)
	defer srv.Close()
	code := s.LoginCode(mini, "user")
	login := srv.URL + PathJSCode2Session + "?grant_type=authorization_code&appid=" + mini + "&secret=secret&js_code=" + code
	answer := func(c *http.Client) (errcode int, errmsg, openid string) {
		resp, err := c.Get(login)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct {
			ErrCode int    `json:"errcode"`
			ErrMsg  string `json:"errmsg"`
			OpenID  string `json:"openid"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		return got.ErrCode, got.ErrMsg, got.OpenID
	}
	if errcode, errmsg, _ := answer(clientFrom("127.0.0.3")); errcode != 40164 || !strings.HasPrefix(errmsg, "invalid ip 127.0.0.3 ") {
		t.Errorf("a login from 127.0.0.3: errcode %d %q, want 40164 naming the address", errcode, errmsg)
	}
	if n := len(s.LoginCalls()); n != 0 {
		t.Errorf("%d login calls recorded for a call refused by the whitelist, want none", n)
	}
	if errcode, _, openid := answer(clientFrom("127.0.0.2")); errcode != 0 || openid != OpenID(mini, "user") {
		t.Errorf("the same code from 127.0.0.2: errcode %d, openid %q; want the user logged in", errcode, openid)
	}
}
