package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// Login without the secret: a service's backend exchanges its users' login
// codes at the agent, on WeChat's own paths (jscode2session, the web
// pages' oauth2 access_token and refresh_token, and a platform's component
// forms for its authorizers), and sends no secret. The agent holds none
// either: it asks the refresher, which puts the secret (or the platform's
// component token) in and calls WeChat, and passes WeChat's answer back
// unchanged. Neither code nor answer is kept, logged or counted by key.

// loginRefusedParams are the parameters a login request must not carry:
// a secret, or the platform's component token, which the refresher puts
// in. Such a request is refused rather than forwarded, and counted
// (secrets.go), so that the services still holding one can be found.
var loginRefusedParams = append(append([]string(nil), secretNames...), "component_access_token")

// serveLogin answers a login path: the app is the /app/KEY/ prefix's, or
// appid's, or the one app the caller may log users in to.
func (a *Agent) serveLogin(x *exchange, prefixKey, path string) {
	r := x.r
	if r.Method != http.MethodGet {
		x.header().Set("Allow", "GET")
		x.wechatError(http.StatusMethodNotAllowed, -1, "bad_request", "WeChat's login paths are called with GET, not %.16s", r.Method)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		x.wechatError(http.StatusBadRequest, -1, "bad_request", "the query does not parse")
		return
	}
	if x.carried(carriedParam(q, loginRefusedParams), "query"); x.secret != "" {
		x.refuseSecret("wxtoken puts it in")
		return
	}
	key := a.loginKey(x, prefixKey, q.Get("appid"))
	if key == "" {
		return
	}
	req := kv.LoginRequest{Path: path, GrantType: q.Get("grant_type"), RefreshToken: q.Get("refresh_token"), ComponentAppID: q.Get("component_appid")}
	req.Code = q.Get("code")
	if path == kv.LoginJSCode2Session || path == kv.LoginComponentJSCode2Session {
		req.Code = q.Get("js_code")
	}
	a.bound(x, a.cfg.UpstreamTimeout)
	reply, err := a.askLogin(r.Context(), key, req)
	if err != nil {
		a.loginFailed(x, key, err)
		return
	}
	a.answerLogin(x, reply)
}

// loginKey returns the app a login call is for, or answers why there is
// none and returns "".
func (a *Agent) loginKey(x *exchange, prefixKey, appid string) string {
	key := prefixKey
	switch {
	case key != "" && appid != "" && appid != key:
		x.wechatError(http.StatusOK, 40013, "bad_request", "invalid appid: %.80q is not %s, the app of this base URL", appid, key)
		return ""
	case key == "":
		key = appid
	}
	if key == "" {
		var mine []string
		for _, k := range a.keys.tokenKeys(false) {
			if x.caller.mayLogin(k) {
				mine = append(mine, k)
			}
		}
		if len(mine) != 1 {
			x.wechatError(http.StatusOK, 41002, "bad_request", "appid missing: this agent serves several apps; send appid, or use the base URL /app/APPID/")
			return ""
		}
		key = mine[0]
	}
	_, kind := kv.SplitKey(key)
	_, _, wecom := kv.SplitWeComKey(key)
	served := a.keys.wants(key) || a.keys.get(key) != nil
	if kv.ValidateKey(key) != nil || kind != kv.KindToken || wecom || !served || !x.caller.mayLogin(key) {
		// What may not be used answers as what is not served.
		x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid appid: this agent serves no logins of %.80q", key)
		return ""
	}
	return key
}

// askLogin asks the refresher to make the login call for key.
func (a *Agent) askLogin(ctx context.Context, key string, req kv.LoginRequest) (kv.LoginReply, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.UpstreamTimeout)
	defer cancel()
	data, _ := json.Marshal(req)
	msg, err := a.cfg.Conn.RequestWithContext(ctx, kv.Subjects{Prefix: a.cfg.SubjectPrefix}.Login(key), data)
	if err != nil {
		return kv.LoginReply{}, err
	}
	var reply kv.LoginReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return kv.LoginReply{}, errors.New("the refresher's reply does not decode")
	}
	return reply, nil
}

// answerLogin answers WeChat's answer as it came, or the refresher's
// refusal in WeChat's shape.
func (a *Agent) answerLogin(x *exchange, reply kv.LoginReply) {
	if e := reply.Error; e != nil {
		switch e.Code {
		case kv.CodeUnknownApp:
			x.wechatError(http.StatusOK, 40013, "unknown_key", "invalid appid: %s", e.Message)
		case kv.CodeBadRequest:
			x.wechatError(http.StatusBadRequest, 40097, "bad_request", "invalid args: %s", e.Message)
		case kv.CodeUpstream:
			x.wechatError(http.StatusBadGateway, -1, "upstream_error", "system busy: %s", e.Message)
		default:
			x.wechatError(http.StatusServiceUnavailable, -1, "unavailable", "system busy: %s", e.Message)
		}
		return
	}
	h := x.header()
	h.Set("Cache-Control", "no-store")
	if strings.HasPrefix(strings.TrimSpace(string(reply.Body)), "{") {
		h.Set("Content-Type", "application/json; encoding=utf-8")
	} else {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	if reply.Status != http.StatusOK {
		x.outcome = "wechat_status"
	}
	x.writeHeader(reply.Status)
	x.w.Write(reply.Body)
}

// loginFailed answers a login the refresher did not answer.
func (a *Agent) loginFailed(x *exchange, key string, err error) {
	subject := kv.Subjects{Prefix: a.cfg.SubjectPrefix}.Login(key)
	switch {
	case x.r.Context().Err() != nil:
		x.outcome = "client_gone"
	case errors.Is(err, nats.ErrNoResponders):
		a.log.Warn("no refresher answers logins", "subject", subject)
		x.wechatError(http.StatusServiceUnavailable, -1, "unavailable",
			"system busy: no refresher answers logins on %s: is wxtoken serve running, and may this agent's NATS user publish there (nats.conf's agent user)?", subject)
		return
	case (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) && a.loginRefused():
		// The server refused the request, and said so only to the
		// connection's error handler: the request waited for nothing.
		x.wechatError(http.StatusServiceUnavailable, -1, "unavailable",
			"system busy: this agent's NATS user may not publish %s: run the agent as nats.conf's agent user", subject)
		return
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		a.log.Warn("the refresher did not answer a login in time", "subject", subject, "timeout", a.cfg.UpstreamTimeout)
		x.wechatError(http.StatusGatewayTimeout, -1, "upstream_timeout",
			"system busy: no answer within %s (is wxtoken serve running, and may this agent's NATS user publish %s?)", a.cfg.UpstreamTimeout, subject)
		return
	}
	a.log.Warn("login request failed", "subject", subject, "error", err)
	x.wechatError(http.StatusServiceUnavailable, -1, "unavailable", "system busy: asking the refresher failed: %v", err)
}

// loginRefused reports whether the NATS server's last word to the agent
// was that it may not publish a login request.
func (a *Agent) loginRefused() bool {
	err := a.cfg.Conn.LastError()
	return err != nil && strings.Contains(err.Error(), "Permissions Violation for Publish to \""+kv.Subjects{Prefix: a.cfg.SubjectPrefix}.Login(""))
}

// forwardUserCall forwards a web login's own calls (/sns/userinfo,
// /sns/auth) to WeChat as they came: they are made with the user's
// access_token, from /sns/oauth2/access_token, not the app's, and the
// app's put in, as every other path gets it, would name no user.
func (a *Agent) forwardUserCall(x *exchange, path string) {
	r := x.r
	if r.Method != http.MethodGet {
		x.header().Set("Allow", "GET")
		x.wechatError(http.StatusMethodNotAllowed, -1, "bad_request", "%s is called with GET, not %.16s", path, r.Method)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		x.wechatError(http.StatusBadRequest, -1, "bad_request", "the query does not parse")
		return
	}
	if x.secret != "" {
		x.refuseSecret("the agent forwards no secret to WeChat, and " + path + " takes none")
		return
	}
	token := q.Get("access_token")
	if token == "" {
		x.wechatError(http.StatusOK, 41001, "bad_request", "access_token missing: the user's, as /sns/oauth2/access_token gave it")
		return
	}
	a.bound(x, a.cfg.UpstreamTimeout)
	call := upstreamCall{client: a.upstream, method: http.MethodGet, base: a.cfg.WeChatBase, path: path, query: q, header: r.Header, timeout: a.cfg.UpstreamTimeout}
	resp, done, err := call.do(r.Context(), token, requestBody{buffered: true})
	if err != nil {
		a.upstreamFailed(x, err, token)
		return
	}
	defer done()
	passBack(x, resp)
}
