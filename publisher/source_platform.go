package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
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

// errNoTicket is a component token not asked for: no verify ticket has
// been pushed yet.
func errNoTicket() error {
	return &upstream.Error{Class: upstream.ClassTicket, ErrMsg: "no component_verify_ticket has been pushed yet",
		Means: "the platform has no verify ticket: WeChat is asked to push one"}
}

func (componentSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	body, _ := json.Marshal(map[string]string{
		"component_appid": g.appid, "component_appsecret": g.secret.Reveal(), "component_verify_ticket": g.ticket,
	})
	status, answer, err := u.Do(ctx, http.MethodPost, "cgi-bin/component/api_component_token", nil, body, g.secret.Reveal())
	if err != nil {
		return issuedValue{}, err
	}
	var a struct {
		Token     *string         `json:"component_access_token"`
		ExpiresIn json.RawMessage `json:"expires_in"`
	}
	if err := upstream.DecodeJSON(status, answer, upstream.ComponentCodes, &a); err != nil {
		return issuedValue{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, g.secret.Reveal()), g.ticket)
	}
	v, err := upstream.IssuedFrom("component_access_token", a.Token, a.ExpiresIn)
	return issuedValue{Issued: v}, err
}

func (componentSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

// checkable: getcallbackip does not take a component token.
func (componentSource) checkable() bool { return false }

func (componentSource) wecom() bool { return false }

func (componentSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// authorizerSource is an authorizer's authorizer_access_token, fetched with
// the platform's component token: POST api_query_auth with the
// authorization code of an authorized event, once; then POST
// api_authorizer_token with the refresh token. Both return a refresh
// token, which is stored before the access token is.
type authorizerSource struct{ component string }

func (authorizerSource) api() string { return "authorizer_token" }

func (s authorizerSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	q := url.Values{"component_access_token": {g.token}}
	if g.code != "" {
		v, err := s.exchange(ctx, u, g, q)
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.ErrCode != upstream.CodeSpent || g.secret.IsZero() {
			return v, err
		}
		// updateauthorized with a code spent or expired: the refresh
		// token still works.
	}
	body, _ := json.Marshal(map[string]string{
		"component_appid": s.component, "authorizer_appid": g.appid, "authorizer_refresh_token": g.secret.Reveal(),
	})
	status, answer, err := u.Do(ctx, http.MethodPost, "cgi-bin/component/api_authorizer_token", q, body, g.token)
	if err != nil {
		return issuedValue{}, upstream.ScrubErrMsg(err, g.secret.Reveal())
	}
	var a authorizerAnswer
	if err := upstream.DecodeJSON(status, answer, upstream.AuthorizerCodes, &a); err != nil {
		return issuedValue{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, g.secret.Reveal()), g.token)
	}
	return a.issued()
}

// exchange trades an authorization code for the authorizer's tokens.
func (s authorizerSource) exchange(ctx context.Context, u *upstream.Client, g grant, q url.Values) (issuedValue, error) {
	body, _ := json.Marshal(map[string]string{"component_appid": s.component, "authorization_code": g.code})
	status, answer, err := u.Do(ctx, http.MethodPost, "cgi-bin/component/api_query_auth", q, body, g.token)
	if err != nil {
		return issuedValue{}, upstream.ScrubErrMsg(err, g.code)
	}
	var a struct {
		Info *authorizerAnswer `json:"authorization_info"`
	}
	if err := upstream.DecodeJSON(status, answer, upstream.AuthorizerCodes, &a); err != nil {
		return issuedValue{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, g.code), g.token)
	}
	switch {
	case a.Info == nil:
		return issuedValue{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "answer has neither authorization_info nor errcode"}
	case a.Info.AppID != g.appid:
		return issuedValue{}, &upstream.Error{Class: upstream.ClassConfig, ErrMsg: "the authorization code is another authorizer's",
			Means: "the authorization event named another authorizer than the code"}
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
	issued, err := upstream.IssuedFrom("authorizer_access_token", a.Token, a.ExpiresIn)
	if err != nil {
		return issuedValue{}, err
	}
	v := issuedValue{Issued: issued}
	if a.Refresh != "" {
		if kv.ValidateToken(a.Refresh) != nil {
			return issuedValue{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "unusable authorizer_refresh_token"}
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
