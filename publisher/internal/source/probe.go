package source

import (
	"context"
	"encoding/json"
	"net/url"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// The probes below ask WeChat whether a secret works from this host (the
// secret is right and not frozen, and this host's address is in the app's
// IP whitelist) with a call that changes nothing at WeChat: any replica,
// a standby included, may make one at any time, and a new secret can be
// tried before it is used. Each answers nil, or the *upstream.Error of
// WeChat's answer (40164 names the address to whitelist). Whatever the
// call returns (a token) is dropped unread.

// ProbeStable probes an official account's or a mini program's AppSecret
// with stable_token in normal mode, which returns the token in use and
// ends none. It is isolated from /cgi-bin/token, so it is the probe of a
// classic-token app too: it does not touch the token services hold. It
// counts against stable_token's own 10,000 a minute and 500,000 a day.
func ProbeStable(ctx context.Context, client *upstream.Client, appid string, secret upstream.Secret) error {
	_, err := NewStable(appid, secret, client).call(ctx, false)
	return err
}

// ProbeWeCom probes a WeCom app secret with gettoken, which returns the
// token held while it is valid (WeCom's documentation said so, and it is
// what is observed) and ends no token in any case: WeCom keeps a token
// per secret and does not end one for a fetch. It costs one of WeCom's
// per-minute calls.
func ProbeWeCom(ctx context.Context, client *upstream.Client, corpid string, secret upstream.Secret) error {
	q := url.Values{"corpid": {corpid}, "corpsecret": {secret.Reveal()}}
	status, body, err := client.Get(ctx, "cgi-bin/gettoken", q, secret.Reveal())
	if err == nil {
		_, err = upstream.DecodeToken(status, body, upstream.WeComCodes)
	}
	return upstream.ScrubErrMsg(err, secret.Reveal())
}

// ProbeComponent probes a third-party platform's secret with
// api_start_push_ticket, which asks WeChat to push the verify ticket now,
// as it does every 10 minutes anyway: the push brings the ticket the
// platform already has or its successor, and the ticket before it keeps
// working. api_component_token is no probe: it needs a verify ticket, and
// a standby may hold none.
func ProbeComponent(ctx context.Context, client *upstream.Client, appid string, secret upstream.Secret) error {
	body, err := json.Marshal(map[string]string{"component_appid": appid, "component_secret": secret.Reveal()})
	if err != nil {
		return &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "cannot build request"}
	}
	status, answer, err := client.PostJSON(ctx, "cgi-bin/component/api_start_push_ticket", nil, body, secret.Reveal())
	if err == nil {
		var ok struct{}
		err = upstream.DecodeJSON(status, answer, upstream.ComponentCodes, &ok)
	}
	return upstream.ScrubErrMsg(err, secret.Reveal())
}
