package agent

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// serveWeChat answers WeChat's token and ticket paths from memory, in
// WeChat's shapes, and forwards every other call. prefixKey is the key of
// the /app/{key}/ prefix, or "": then the request names the app (appid,
// corpid or access_token). A secret in the request is never used: it is
// counted, and refused where the request would take it to WeChat (secrets.go).
func (a *Agent) serveWeChat(x *exchange, prefixKey, path string) {
	q := x.r.URL.Query()
	switch path {
	case "/cgi-bin/token":
		x.class = "wechat_token"
		if f := a.tokenKey(x, prefixKey, q.Get("appid")); f != nil {
			a.answerToken(x, f, false)
		}
	case "/cgi-bin/stable_token":
		x.class = "wechat_token"
		a.serveStableToken(x, prefixKey)
	case "/cgi-bin/gettoken":
		x.class = "wechat_token"
		if f := a.weComTokenKey(x, prefixKey, q.Get("corpid")); f != nil {
			a.answerToken(x, f, true)
		}
	case "/cgi-bin/ticket/getticket":
		x.class = "wechat_ticket"
		kinds := map[string]string{"jsapi": kv.KindJSAPITicket, "wx_card": kv.KindWxCardTicket}
		a.serveTicket(x, prefixKey, false, kinds[q.Get("type")])
	case "/cgi-bin/get_jsapi_ticket":
		x.class = "wechat_ticket"
		a.serveTicket(x, prefixKey, true, kv.KindJSAPITicket)
	case "/cgi-bin/ticket/get":
		x.class = "wechat_ticket"
		kind := ""
		if q.Get("type") == "agent_config" {
			kind = kv.KindAgentConfigTicket
		}
		a.serveTicket(x, prefixKey, true, kind)
	case kv.LoginJSCode2Session, kv.LoginOAuthAccessToken, kv.LoginOAuthRefreshToken,
		kv.LoginComponentJSCode2Session, kv.LoginComponentAccessToken, kv.LoginComponentRefreshToken:
		x.class = "login"
		a.serveLogin(x, prefixKey, path)
	case "/sns/userinfo", "/sns/auth":
		x.class = "login"
		a.forwardUserCall(x, path)
	default:
		x.class = "proxy"
		a.proxy(x, prefixKey, path)
	}
}

// wechatFind is find with WeChat's answers for a key not found: what is
// not served (or may not be used) is an invalid appid.
func (a *Agent) wechatFind(x *exchange, key string) *followed {
	f, wanted := a.find(x.caller, key)
	switch {
	case f != nil:
		return f
	case wanted:
		x.wechatError(http.StatusOK, -1, "not_ready", "system busy: no value of %s yet", key)
	default:
		x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid appid: this agent serves no %.80q", key)
	}
	return nil
}

// tokenKey finds the access token an official account's token call asks
// for: the prefix's app, or appid.
func (a *Agent) tokenKey(x *exchange, prefixKey, appid string) *followed {
	key := prefixKey
	switch {
	case key == "" && appid == "":
		x.wechatError(http.StatusOK, 41002, "bad_request", "appid missing")
		return nil
	case key == "":
		key = appid
	case appid != "" && appid != key:
		x.wechatError(http.StatusOK, 40013, "bad_request", "invalid appid: %.80q is not %s, the app of this base URL", appid, key)
		return nil
	}
	if _, kind := kv.SplitKey(key); kind != kv.KindToken {
		x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid appid %.80q", key)
		return nil
	}
	if _, _, wecom := kv.SplitWeComKey(key); wecom {
		x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid appid: %s is a WeCom app; its token is at /cgi-bin/gettoken", key)
		return nil
	}
	return a.wechatFind(x, key)
}

// weComTokenKey finds the token a WeCom gettoken call asks for: the
// prefix's app, or the one app of corpid this agent serves the caller.
func (a *Agent) weComTokenKey(x *exchange, prefixKey, corpid string) *followed {
	if prefixKey != "" {
		c, _, wecom := kv.SplitWeComKey(prefixKey)
		switch {
		case !wecom:
			x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid corpid: %s is an official account; its token is at /cgi-bin/token", prefixKey)
			return nil
		case corpid != "" && corpid != c:
			x.wechatError(http.StatusOK, 40013, "bad_request", "invalid corpid: %.80q is not %s, the corp of this base URL", corpid, c)
			return nil
		}
		return a.wechatFind(x, prefixKey)
	}
	if corpid == "" {
		x.wechatError(http.StatusOK, 41002, "bad_request", "corpid missing")
		return nil
	}
	var mine []string
	for _, key := range a.keys.tokenKeys(true) {
		if c, _, _ := kv.SplitWeComKey(key); c == corpid && x.caller.may(key) {
			mine = append(mine, key)
		}
	}
	switch len(mine) {
	case 0:
		x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid corpid: this agent serves no app of %.80q", corpid)
		return nil
	case 1:
		return a.wechatFind(x, mine[0])
	}
	x.wechatError(http.StatusOK, 40013, "bad_request",
		"this agent serves several apps of %s; use the base URL /app/%s-AGENT/ to name one", corpid, corpid)
	return nil
}

// answerToken answers a token call with the value held, in the shape of
// WeChat's answer, expires_in the seconds it has left.
func (a *Agent) answerToken(x *exchange, f *followed, wecom bool) {
	t, ok := a.wechatUsable(x, f)
	if !ok {
		return
	}
	answer := map[string]any{"access_token": t.Value, "expires_in": secondsLeft(t, time.Now())}
	if wecom {
		answer["errcode"], answer["errmsg"] = 0, "ok"
	}
	x.writeJSON(http.StatusOK, answer)
}

// wechatUsable is usable with WeChat's answers: -1, system busy, while the
// value has expired; 61003, as WeChat answers for an account that has not
// authorized the platform, once the key is removed.
func (a *Agent) wechatUsable(x *exchange, f *followed) (subscriber.Token, bool) {
	t, err := a.current(x.r.Context(), f)
	if errors.Is(err, subscriber.ErrRemoved) {
		x.wechatError(http.StatusOK, 61003, "removed", "component is not authorized by this account: %s", removedMessage(err))
		return t, false
	}
	if err != nil {
		x.wechatError(http.StatusOK, -1, "expired", "system busy: the value of %s expired and was not replaced (is the refresher running?)", f.key)
		return t, false
	}
	return t, true
}

// serveStableToken answers /cgi-bin/stable_token. force_refresh asks the
// refresher to replace the token held, which it does only once WeChat
// says the token is dead; within its rate limit the current token is the
// answer, as WeChat's own is within 30 s of a forced call.
func (a *Agent) serveStableToken(x *exchange, prefixKey string) {
	if x.r.Method != http.MethodPost {
		x.wechatError(http.StatusOK, 43002, "bad_request", "require POST method")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, x.r.Body, maxSmallBody))
	if err != nil {
		x.wechatError(http.StatusOK, 47001, "bad_request", "data format error: the body is over 4 KiB, or did not arrive")
		return
	}
	bodyRead(x)
	x.carried(jsonSecret(body), "body") // counted; the body goes nowhere
	var req struct {
		AppID        string `json:"appid"`
		ForceRefresh bool   `json:"force_refresh"`
	}
	if json.Unmarshal(body, &req) != nil {
		x.wechatError(http.StatusOK, 47001, "bad_request", "data format error: the body is not JSON")
		return
	}
	f := a.tokenKey(x, prefixKey, req.AppID)
	if f == nil {
		return
	}
	if req.ForceRefresh {
		a.bound(x, a.cfg.RefreshTimeout)
		_, err := a.askRefresh(x.r.Context(), f, f.sub.Token().Revision, "stable_token force_refresh")
		if err != nil && !errors.Is(err, subscriber.ErrRateLimited) {
			x.wechatError(http.StatusOK, -1, "upstream", "system busy: no new token: %s", a.refreshFailure(err))
			return
		}
	}
	a.answerToken(x, f, false)
}

// serveTicket answers the ticket calls: the ticket of kind hanging off the
// prefix's app, or off the app whose token (current or recent) the call
// names.
func (a *Agent) serveTicket(x *exchange, prefixKey string, wecom bool, kind string) {
	if kind == "" {
		x.wechatError(http.StatusOK, 40097, "bad_request", "invalid args: type")
		return
	}
	key := prefixKey
	if token := x.r.URL.Query().Get("access_token"); key == "" && token == "" {
		x.wechatError(http.StatusOK, 41001, "bad_request", "access_token missing")
		return
	}
	if key == "" {
		var ok bool
		key, ok = a.keys.ofToken(x.r.URL.Query().Get("access_token"))
		if !ok || !x.caller.may(key) {
			code := 40001
			if wecom {
				code = 40014
			}
			x.wechatError(http.StatusOK, code, "unknown_key", "invalid credential: the access_token is not one this agent holds")
			return
		}
	}
	if _, _, isWeCom := kv.SplitWeComKey(key); isWeCom != wecom {
		x.wechatError(http.StatusOK, 40097, "bad_request", "invalid args: %s is not an app of this API's platform", key)
		return
	}
	ticketKey := kv.Key(key, kind)
	f, wanted := a.find(x.caller, ticketKey)
	switch {
	case f == nil && wanted:
		x.wechatError(http.StatusOK, -1, "not_ready", "system busy: no value of %s yet", ticketKey)
		return
	case f == nil:
		x.wechatError(http.StatusOK, 40097, "unknown_key", "invalid args: this agent serves no %s", ticketKey)
		return
	}
	t, ok := a.wechatUsable(x, f)
	if !ok {
		return
	}
	x.writeJSON(http.StatusOK, map[string]any{"errcode": 0, "errmsg": "ok", "ticket": t.Value, "expires_in": secondsLeft(t, time.Now())})
}
