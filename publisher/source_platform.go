package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
)

// check reports whether the message token and EncodingAESKey can check and
// decrypt pushes, without quoting either.
func (p *Platform) check() error {
	if p.MessageToken.IsZero() {
		return errors.New("a platform needs its message token (message_token)")
	}
	if _, err := p.crypter("wx0000000000000000"); err != nil {
		return err
	}
	return nil
}

func (p *Platform) crypter(componentAppID string) (*wxcrypt.Crypter, error) {
	c, err := wxcrypt.New(p.MessageToken.Reveal(), p.EncodingAESKey.Reveal(), componentAppID)
	if err != nil {
		return nil, errors.New("encoding_aes_key is not a 43-character EncodingAESKey")
	}
	return c, nil
}

// componentSource is POST /cgi-bin/component/api_component_token, with the
// newest component_verify_ticket WeChat pushed. Without a ticket that
// works there is no call: the push is restarted instead (startPush), and
// the token is fetched when the next ticket arrives.
type componentSource struct{}

func (componentSource) api() string { return "component_token" }

func (componentSource) fetch(ctx context.Context, u *upstreamClient, g grant) (issuedValue, error) {
	if g.ticket == "" {
		return issuedValue{}, &upstreamError{class: classTicket, ErrMsg: "no component_verify_ticket has been pushed yet",
			means: "the platform has no verify ticket: WeChat is asked to push one"}
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": g.appid, "component_appsecret": g.secret.Reveal(), "component_verify_ticket": g.ticket,
	})
	status, answer, err := u.do(ctx, http.MethodPost, "cgi-bin/component/api_component_token", nil, body, g.secret.Reveal())
	if err != nil {
		return issuedValue{}, err
	}
	var a struct {
		Token     *string         `json:"component_access_token"`
		ExpiresIn json.RawMessage `json:"expires_in"`
	}
	if err := decodePlatformAnswer(status, answer, componentErrcodes, &a); err != nil {
		return issuedValue{}, scrubErrMsg(scrubErrMsg(err, g.secret.Reveal()), g.ticket)
	}
	return issuedFrom("component_access_token", a.Token, a.ExpiresIn)
}

func (componentSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

// checkable: getcallbackip does not take a component token.
func (componentSource) checkable() bool { return false }

func (componentSource) wecom() bool { return false }

func (componentSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// componentErrcodes are what api_component_token answers.
var componentErrcodes = map[int]errcodeInfo{
	-1:    {classRetry, "WeChat is busy"},
	61005: {classTicket, "the component_verify_ticket is expired"},
	61006: {classTicket, "the component_verify_ticket is invalid"},
	61004: {classConfig, "this server's IP address is not on the platform's whitelist"},
	61011: {classConfig, "the component appid is invalid"},
	40125: {classConfig, "the component appsecret is invalid"},
	41004: {classConfig, "the component appsecret is missing"},
	40001: {classConfig, "the component appsecret is wrong"},
	45009: {classQuota, "the daily quota of component token fetches is used up"},
}

// authorizerSource is an authorizer's authorizer_access_token, fetched with
// the platform's component token: POST api_query_auth with the
// authorization code of an authorized event, once; then POST
// api_authorizer_token with the refresh token. Both return a refresh
// token, which is stored before the access token is.
type authorizerSource struct{ component string }

func (authorizerSource) api() string { return "authorizer_token" }

func (s authorizerSource) fetch(ctx context.Context, u *upstreamClient, g grant) (issuedValue, error) {
	q := url.Values{"component_access_token": {g.token}}
	if g.code != "" {
		v, err := s.exchange(ctx, u, g, q)
		var ue *upstreamError
		if !errors.As(err, &ue) || ue.ErrCode != codeSpent || g.secret.IsZero() {
			return v, err
		}
		// updateauthorized with a code spent or expired: the refresh
		// token still works.
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": s.component, "authorizer_appid": g.appid, "authorizer_refresh_token": g.secret.Reveal(),
	})
	status, answer, err := u.do(ctx, http.MethodPost, "cgi-bin/component/api_authorizer_token", q, body, g.token)
	if err != nil {
		return issuedValue{}, scrubErrMsg(err, g.secret.Reveal())
	}
	var a authorizerAnswer
	if err := decodePlatformAnswer(status, answer, authorizerErrcodes, &a); err != nil {
		return issuedValue{}, scrubErrMsg(scrubErrMsg(err, g.secret.Reveal()), g.token)
	}
	return a.issued()
}

// codeSpent is api_query_auth's answer to a code used or expired.
const codeSpent = 61010

// exchange trades an authorization code for the authorizer's tokens.
func (s authorizerSource) exchange(ctx context.Context, u *upstreamClient, g grant, q url.Values) (issuedValue, error) {
	body, _ := json.Marshal(map[string]string{"component_appid": s.component, "authorization_code": g.code})
	status, answer, err := u.do(ctx, http.MethodPost, "cgi-bin/component/api_query_auth", q, body, g.token)
	if err != nil {
		return issuedValue{}, scrubErrMsg(err, g.code)
	}
	var a struct {
		Info *authorizerAnswer `json:"authorization_info"`
	}
	if err := decodePlatformAnswer(status, answer, authorizerErrcodes, &a); err != nil {
		return issuedValue{}, scrubErrMsg(scrubErrMsg(err, g.code), g.token)
	}
	switch {
	case a.Info == nil:
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: "answer has neither authorization_info nor errcode"}
	case a.Info.AppID != g.appid:
		return issuedValue{}, &upstreamError{class: classConfig, ErrMsg: "the authorization code is another authorizer's",
			means: "the authorization event named another authorizer than the code"}
	}
	return a.Info.issued()
}

type authorizerAnswer struct {
	AppID     string          `json:"authorizer_appid"`
	Token     *string         `json:"authorizer_access_token"`
	ExpiresIn json.RawMessage `json:"expires_in"`
	Refresh   string          `json:"authorizer_refresh_token"`
}

func (a authorizerAnswer) issued() (issuedValue, error) {
	v, err := issuedFrom("authorizer_access_token", a.Token, a.ExpiresIn)
	if err != nil {
		return v, err
	}
	if a.Refresh != "" {
		if kv.ValidateToken(a.Refresh) != nil {
			return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: "unusable authorizer_refresh_token"}
		}
		v.Refresh = NewSecret(a.Refresh)
	}
	return v, nil
}

func (authorizerSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (authorizerSource) checkable() bool { return true }

func (authorizerSource) wecom() bool { return false }

func (authorizerSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// authorizerErrcodes are what api_authorizer_token and api_query_auth
// answer; a component token refused is classToken.
var authorizerErrcodes = map[int]errcodeInfo{
	-1:        {classRetry, "WeChat is busy"},
	61023:     {classConfig, "the refresh token is invalid: the account must authorize the platform again"},
	codeSpent: {classConfig, "the authorization code is expired or used: the account must authorize the platform again"},
	61003:     {classConfig, "the account has not authorized the platform"},
	61011:     {classConfig, "the component appid is invalid"},
	45009:     {classQuota, "the daily quota of authorizer token fetches is used up"},
}

// decodePlatformAnswer decodes a component API's answer into v, or returns
// its errcode as an *upstreamError classed by codes.
func decodePlatformAnswer(status int, body []byte, codes map[int]errcodeInfo, v any) error {
	if err := checkAnswer(status, body); err != nil {
		return err
	}
	var e struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return &upstreamError{class: classRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	if info, known := codes[e.ErrCode]; known {
		return &upstreamError{ErrCode: e.ErrCode, ErrMsg: e.ErrMsg, class: info.class, means: info.meaning}
	}
	switch {
	case wechaterr.TokenRejected(e.ErrCode):
		return &upstreamError{ErrCode: e.ErrCode, ErrMsg: e.ErrMsg, class: classToken, means: "the component_access_token it was asked with is not valid"}
	case e.ErrCode != 0:
		return &upstreamError{ErrCode: e.ErrCode, ErrMsg: e.ErrMsg, class: classRetry, means: "unknown errcode"}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &upstreamError{class: classRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	return nil
}
