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
