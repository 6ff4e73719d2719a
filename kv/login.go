package kv

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Login is the request-reply subject on which the refresher's replicas
// exchange a user's login code of key for WeChat's answer, with the key's
// secret (or its platform's component token) that only they hold. "*"
// matches every key.
func (s Subjects) Login(key string) string { return s.prefix() + ".login." + key }

// LoginQueue is the queue group the replicas answer logins in: one
// replica takes each request, so a code (single-use at WeChat) goes to
// WeChat once.
const LoginQueue = "wxtoken-login"

// The login paths: WeChat's own, which the agent answers and the
// refresher calls. The component forms are a third-party platform's, for
// an account that authorized it.
const (
	LoginJSCode2Session          = "/sns/jscode2session"
	LoginOAuthAccessToken        = "/sns/oauth2/access_token"
	LoginOAuthRefreshToken       = "/sns/oauth2/refresh_token"
	LoginComponentJSCode2Session = "/sns/component/jscode2session"
	LoginComponentAccessToken    = "/sns/oauth2/component/access_token"
	LoginComponentRefreshToken   = "/sns/oauth2/component/refresh_token"
)

// LoginPaths are the paths a LoginRequest may name.
var LoginPaths = []string{
	LoginJSCode2Session, LoginOAuthAccessToken, LoginOAuthRefreshToken,
	LoginComponentJSCode2Session, LoginComponentAccessToken, LoginComponentRefreshToken,
}

// IsComponentLogin reports whether path is a third-party platform's form.
func IsComponentLogin(path string) bool {
	return path == LoginComponentJSCode2Session || path == LoginComponentAccessToken || path == LoginComponentRefreshToken
}

// IsLoginRefresh reports whether path renews a web login with a refresh
// token rather than exchanging a code.
func IsLoginRefresh(path string) bool {
	return path == LoginOAuthRefreshToken || path == LoginComponentRefreshToken
}

// MaxLoginRequestSize bounds a login request.
const MaxLoginRequestSize = 2048

// LoginRequest asks for one login exchange. It carries what the caller
// sent but the secret, which the caller never has: the code (js_code for
// jscode2session), or the user's refresh token for a refresh path.
type LoginRequest struct {
	Path         string `json:"path"` // one of LoginPaths
	Code         string `json:"code,omitempty"`
	GrantType    string `json:"grant_type,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	// ComponentAppID, when the caller named one on a component path, is
	// checked against the platform the key authorized.
	ComponentAppID string `json:"component_appid,omitempty"`
}

// ErrBadLoginRequest is wrapped by every login request decoding failure.
var ErrBadLoginRequest = errors.New("bad login request")

// DecodeLoginRequest parses and checks a login request.
func DecodeLoginRequest(data []byte) (LoginRequest, error) {
	if len(data) > MaxLoginRequestSize {
		return LoginRequest{}, fmt.Errorf("%w: %d bytes, more than %d", ErrBadLoginRequest, len(data), MaxLoginRequestSize)
	}
	var req LoginRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return LoginRequest{}, fmt.Errorf("%w: not JSON", ErrBadLoginRequest)
	}
	if !slices.Contains(LoginPaths, req.Path) {
		return LoginRequest{}, fmt.Errorf("%w: path %.80q is not a login path", ErrBadLoginRequest, req.Path)
	}
	return req, nil
}

// LoginReply is the refresher's answer: WeChat's, unchanged (its HTTP
// status and body), or Error when WeChat gave none or the refresher would
// not ask.
type LoginReply struct {
	Status int         `json:"status,omitempty"`
	Body   []byte      `json:"body,omitempty"` // base64 on the wire: WeChat's bytes as they came
	Error  *ReplyError `json:"error,omitempty"`
}
