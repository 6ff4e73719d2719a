package kv

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestLoginRequestsNameALoginPath(t *testing.T) {
	for _, path := range LoginPaths {
		data, _ := json.Marshal(LoginRequest{Path: path, Code: "c"})
		if req, err := DecodeLoginRequest(data); err != nil || req.Path != path || req.Code != "c" {
			t.Errorf("%s: %+v, %v", path, req, err)
		}
	}
	for name, data := range map[string]string{
		"another path": `{"path":"/cgi-bin/token"}`,
		"no path":      `{"code":"c"}`,
		"not JSON":     `code=c`,
		"too long":     `{"path":"/sns/jscode2session","code":"` + string(make([]byte, MaxLoginRequestSize)) + `"}`,
	} {
		if _, err := DecodeLoginRequest([]byte(data)); !errors.Is(err, ErrBadLoginRequest) {
			t.Errorf("%s: %v, want ErrBadLoginRequest", name, err)
		}
	}
}

func TestALoginReplyCarriesWeChatsBytesAsTheyCame(t *testing.T) {
	body := []byte("<html>502 Bad Gateway</html>\n")
	data, _ := json.Marshal(LoginReply{Status: 502, Body: body})
	var back LoginReply
	if err := json.Unmarshal(data, &back); err != nil || back.Status != 502 || string(back.Body) != string(body) || back.Error != nil {
		t.Errorf("%s came back as %+v, %v", data, back, err)
	}
	if (Subjects{}).Login("wx1") != "wechat.token.login.wx1" {
		t.Errorf("the subject is %s", Subjects{}.Login("wx1"))
	}
}

// FuzzDecodeLoginRequest: whatever arrives on the login subject is a
// request naming a login path, which encodes and decodes back to itself,
// or ErrBadLoginRequest; never a panic.
func FuzzDecodeLoginRequest(f *testing.F) {
	for _, seed := range []string{
		`{"path":"/sns/jscode2session","code":"c","grant_type":"authorization_code"}`,
		`{"path":"/sns/oauth2/refresh_token","refresh_token":"r","grant_type":"refresh_token"}`,
		`{"path":"/sns/component/jscode2session","code":"c","component_appid":"wxc"}`,
		`{"path":"/cgi-bin/token"}`, `{"path":null}`, `[]`, ``, `{"path":"/sns/jscode2session","code":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeLoginRequest(data)
		if err != nil {
			if !errors.Is(err, ErrBadLoginRequest) {
				t.Fatalf("%q: %v, not ErrBadLoginRequest", data, err)
			}
			return
		}
		again, _ := json.Marshal(req)
		if len(again) > MaxLoginRequestSize {
			return // escaped on the way out ("<" is six bytes), it no longer fits
		}
		back, err := DecodeLoginRequest(again)
		if err != nil || back != req {
			t.Fatalf("%q decoded to %+v, which came back as %+v, %v", data, req, back, err)
		}
	})
}
