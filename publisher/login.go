package publisher

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Login exchanges: a service's backend turns a user's login code into the
// user's openid and session_key (or a web page's user token) with the
// app's AppSecret, which only the refresher holds. The agent asks on
// kv.Subjects.Login(key); the replicas answer in one queue group, the
// leader or not, because an exchange fetches no access_token and ends
// none: it reads the secret (or the platform's component token, which it
// never fetches), and each code goes to one replica, so to WeChat once. A
// replica WeChat refuses from where it stands stays out of the group
// unless it leads (loginqueue.go).
// WeChat's answer goes back unchanged. Neither the code nor the answer is
// logged, kept, or put in a metric label.

// maxLoginsInFlight bounds the exchanges one replica has under way: each
// waits on WeChat, and a burst of logins must not open thousands of
// connections at once.
const maxLoginsInFlight = 64

// loginServer answers login requests for one refresher.
type loginServer struct {
	r       *Refresher
	count   *prometheus.CounterVec // appid, path, result
	slots   chan struct{}
	running sync.WaitGroup
	recheck chan struct{} // buffer 1: whether to answer may have changed (loginqueue.go)
}

func newLoginServer(r *Refresher) *loginServer {
	s := &loginServer{r: r, slots: make(chan struct{}, maxLoginsInFlight), recheck: make(chan struct{}, 1),
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_logins_total",
			Help: "Login-code exchanges this replica made for the agent, by app, path (jscode2session, oauth2_access_token, oauth2_refresh_token and their component_ forms) and result (ok, code: the user's code or refresh token refused, config: the secret, appid or IP refused, busy, error: another errcode, unanswered: WeChat gave no answer, refused: not sent to WeChat).",
		}, []string{"appid", "path", "result"})}
	if r.cfg.Registerer != nil {
		r.cfg.Registerer.MustRegister(s.count)
	}
	return s
}

// handle takes one request off the subscription and answers it on a
// goroutine of its own: a slow WeChat holds up no other login.
func (s *loginServer) handle(msg *nats.Msg) {
	select {
	case s.slots <- struct{}{}:
	default:
		respond(msg, kv.LoginReply{Error: &kv.ReplyError{Code: kv.CodeUnavailable,
			Message: "this replica has " + strconv.Itoa(maxLoginsInFlight) + " logins under way; ask again"}})
		return
	}
	s.running.Go(func() {
		defer func() { <-s.slots }()
		key := strings.TrimPrefix(msg.Subject, kv.Subjects{Prefix: s.r.cfg.SubjectPrefix}.Login(""))
		respond(msg, s.exchange(key, msg.Data))
	})
}

func respond(msg *nats.Msg, reply kv.LoginReply) {
	data, _ := json.Marshal(reply)
	msg.Respond(data)
}

// exchange makes one login call to WeChat for key, and returns WeChat's
// answer, or why none was asked.
func (s *loginServer) exchange(key string, data []byte) kv.LoginReply {
	req, err := kv.DecodeLoginRequest(data)
	if err != nil {
		return refused(kv.CodeBadRequest, err.Error())
	}
	if err := kv.ValidateKey(key); err != nil {
		return refused(kv.CodeBadRequest, err.Error())
	}
	path := metricPath(req.Path)
	q, sensitive, reply := s.query(key, req)
	if reply != nil {
		label := key
		if reply.Error.Code == kv.CodeUnknownApp {
			label = "unknown" // whoever may ask must not grow the series at will
		}
		s.count.WithLabelValues(label, path, "refused").Inc()
		return *reply
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.r.cfg.UpstreamTimeout)
	defer cancel()
	status, body, err := s.r.apps.wechat.Get(ctx, strings.TrimPrefix(req.Path, "/"), q, sensitive)
	if err != nil {
		s.count.WithLabelValues(key, path, "unanswered").Inc()
		msg := err.Error()
		for _, secret := range []string{sensitive, req.Code, req.RefreshToken} {
			msg = upstream.Scrub(msg, secret)
		}
		s.r.log.Warn("login exchange got no answer from WeChat", "appid", key, "path", req.Path, "error", msg)
		return refused(kv.CodeUpstream, "no answer from WeChat: "+msg)
	}
	s.count.WithLabelValues(key, path, loginResult(status, body)).Inc()
	return kv.LoginReply{Status: status, Body: body}
}

func refused(code, message string) kv.LoginReply {
	return kv.LoginReply{Error: &kv.ReplyError{Code: code, Message: message}}
}

// query is the query of req's call for key, with the secret (or the
// component token) put in, and that secret for scrubbing; or the reply
// that refuses it.
func (s *loginServer) query(key string, req kv.LoginRequest) (url.Values, string, *kv.LoginReply) {
	q := url.Values{"appid": {key}}
	if req.GrantType != "" {
		q.Set("grant_type", req.GrantType)
	}
	switch {
	case kv.IsLoginRefresh(req.Path):
		q.Set("refresh_token", req.RefreshToken)
	case req.Path == kv.LoginJSCode2Session || req.Path == kv.LoginComponentJSCode2Session:
		q.Set("js_code", req.Code)
	default:
		q.Set("code", req.Code)
	}
	if kv.IsComponentLogin(req.Path) {
		token, reply := s.componentToken(key, req.ComponentAppID, q)
		return q, token, reply
	}
	app, ok := s.r.apps.app(key)
	switch {
	case !ok && s.r.platforms.Authorizer(key) != nil:
		reply := refused(kv.CodeBadRequest, key+" is an account that authorized a platform: its logins go through "+componentForm(req.Path))
		return nil, "", &reply
	case !ok:
		reply := refused(kv.CodeUnknownApp, "this refresher keeps no app "+key)
		return nil, "", &reply
	case app.wecom():
		reply := refused(kv.CodeBadRequest, key+" is a WeCom app: its logins (/cgi-bin/auth/getuserinfo) need no secret; the agent forwards them with the token")
		return nil, "", &reply
	case app.platform():
		reply := refused(kv.CodeBadRequest, key+" is a third-party platform: it logs users in on behalf of its authorizers, with their appids")
		return nil, "", &reply
	}
	if req.Path != kv.LoginOAuthRefreshToken { // the one that needs no secret
		q.Set("secret", app.Secret.Reveal())
	}
	return q, app.Secret.Reveal(), nil
}

// componentToken puts in the component appid and token of the platform
// authorizer key authorized.
func (s *loginServer) componentToken(key, named string, q url.Values) (string, *kv.LoginReply) {
	a := s.r.platforms.Authorizer(key)
	if a == nil {
		reply := refused(kv.CodeUnknownApp, "no platform of this refresher has an authorizer "+key)
		return "", &reply
	}
	if named != "" && named != a.Component {
		reply := refused(kv.CodeBadRequest, "component_appid "+named+" is not "+a.Component+", the platform "+key+" authorized")
		return "", &reply
	}
	token, ok := s.r.creds.Valid(a.Component)
	if !ok {
		reply := refused(kv.CodeUnavailable, "no valid component_access_token of "+a.Component+" yet (has a verify ticket been pushed?)")
		return "", &reply
	}
	q.Set("component_appid", a.Component)
	q.Set("component_access_token", token.Value)
	return token.Value, nil
}

// componentForm is the component path of a login path.
func componentForm(path string) string {
	switch path {
	case kv.LoginJSCode2Session:
		return kv.LoginComponentJSCode2Session
	case kv.LoginOAuthAccessToken:
		return kv.LoginComponentAccessToken
	}
	return kv.LoginComponentRefreshToken
}

// metricPath is a login path as the metric's label says it.
func metricPath(path string) string {
	switch path {
	case kv.LoginJSCode2Session:
		return "jscode2session"
	case kv.LoginOAuthAccessToken:
		return "oauth2_access_token"
	case kv.LoginOAuthRefreshToken:
		return "oauth2_refresh_token"
	case kv.LoginComponentJSCode2Session:
		return "component_jscode2session"
	case kv.LoginComponentAccessToken:
		return "component_oauth2_access_token"
	}
	return "component_oauth2_refresh_token"
}

// loginResult classes WeChat's answer to a login call by its errcode.
func loginResult(status int, body []byte) string {
	var answer struct {
		ErrCode int `json:"errcode"`
	}
	if status != 200 || json.Unmarshal(body, &answer) != nil {
		return "error"
	}
	switch answer.ErrCode {
	case 0:
		return "ok"
	case 40029, 40163, 40030, 42002, 42003: // code invalid or used; refresh token invalid or expired; code expired
		return "code"
	case 40013, 40125, 40164, 40243, 41002, 41004, 89501, 89503, 61003, 40001, 40014, 42001:
		return "config"
	case -1, 45011:
		return "busy"
	}
	return "error"
}
