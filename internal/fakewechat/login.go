package fakewechat

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"net/url"
	"time"
)

// The login paths: a user's login code exchanged for the user's openid and
// session_key (mini programs and mini games), or for a web page's user
// token (official accounts' web pages, website login), with the app's
// AppSecret; or, for an account that authorized a third-party platform,
// with the platform's component token. A code is issued for one app (a
// phone's wx.login, a browser's authorize redirect: LoginCode and
// OAuthCode), works once, within 5 minutes; otherwise 40029, and 40163
// when it is used again. A web login's refresh token works 30 days, and
// renews without the secret. The exchanges that take the secret are
// refused as a token fetch is: from an address off the app's IP whitelist
// (40164, whitelist.go), with the secret of before a reset (40125), and
// while the secret is frozen (40243, secrets.go).
const (
	PathJSCode2Session          = "/sns/jscode2session"
	PathOAuthAccessToken        = "/sns/oauth2/access_token"
	PathOAuthRefreshToken       = "/sns/oauth2/refresh_token"
	PathComponentJSCode2Session = "/sns/component/jscode2session"
	PathComponentAccessToken    = "/sns/oauth2/component/access_token"
	PathComponentRefreshToken   = "/sns/oauth2/component/refresh_token"
	// A web login's own calls, with the user's access_token.
	PathUserInfo = "/sns/userinfo"
	PathUserAuth = "/sns/auth"
)

const (
	loginCodeLifetime    = 5 * time.Minute
	webRefreshLifetime   = 30 * 24 * time.Hour
	webAccessTokenExpiry = 7200
)

// loginBook is what the fake knows of logins.
type loginBook struct {
	codes   map[string]*loginCode
	refresh map[string]*webRefresh // a web login's refresh tokens, by value
	users   map[string]*webRefresh // a web login's access tokens, by value: whose, and until when
	calls   []LoginCall
}

type loginCode struct {
	appid, user, scope string
	web                bool // an authorize redirect's, not wx.login's
	issued             time.Time
	used               bool
}

type webRefresh struct {
	appid, user, scope string
	expires            time.Time
}

// LoginCall is a login call the fake answered: what it was sent, and what
// came with it.
type LoginCall struct {
	Path  string
	AppID string
	Code  string // js_code or code; "" on a refresh path
	// Secret says that a secret came (secret or appsecret), and
	// ComponentToken that a component_access_token did, right or wrong.
	Secret, ComponentToken bool
	ErrCode                int    // of the answer; 0 for a success
	From                   string // the caller's address, without its port
}

// LoginCode issues a mini program's login code for user of appid, as
// wx.login gives the phone one.
func (s *Server) LoginCode(appid, user string) string {
	return s.issueCode(appid, user, "", false)
}

// OAuthCode issues a web page's authorization code for user of appid, with
// scope (snsapi_base or snsapi_userinfo), as WeChat's authorize redirect
// gives the browser one.
func (s *Server) OAuthCode(appid, user, scope string) string {
	return s.issueCode(appid, user, scope, true)
}

func (s *Server) issueCode(appid, user, scope string, web bool) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.unique("code")
	s.logins().codes[code] = &loginCode{appid: appid, user: user, scope: scope, web: web, issued: s.cfg.Now()}
	return code
}

// LoginCalls returns every login call the fake answered, in order.
func (s *Server) LoginCalls() []LoginCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LoginCall(nil), s.logins().calls...)
}

// OpenID is user's openid under appid, as the login answers give it.
func OpenID(appid, user string) string { return "o" + digest(appid+"/"+user) }

// UnionID is user's unionid, the same under every app.
func UnionID(user string) string { return "u" + digest(user) }

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:27]
}

// logins returns the login book. Callers hold s.mu.
func (s *Server) logins() *loginBook {
	if s.login == nil {
		s.login = &loginBook{codes: map[string]*loginCode{}, refresh: map[string]*webRefresh{}, users: map[string]*webRefresh{}}
	}
	return s.login
}

func (s *Server) serveLogin(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, _, _ := net.SplitHostPort(r.RemoteAddr)
	call := LoginCall{Path: r.URL.Path, AppID: q.Get("appid"), From: from,
		Secret:         q.Get("secret") != "" || q.Get("appsecret") != "",
		ComponentToken: q.Get("component_access_token") != ""}
	refresh := r.URL.Path == PathOAuthRefreshToken || r.URL.Path == PathComponentRefreshToken
	if !refresh {
		call.Code = q.Get("js_code")
		if r.URL.Path == PathOAuthAccessToken || r.URL.Path == PathComponentAccessToken {
			call.Code = q.Get("code")
		}
	}
	now := s.cfg.Now()
	s.mu.Lock()
	answer := s.loginAnswer(r.URL.Path, q, call.Code, refresh, now)
	if code, ok := answer["errcode"].(int); ok {
		call.ErrCode = code
	}
	s.logins().calls = append(s.logins().calls, call)
	s.mu.Unlock()
	writeJSON(w, answer)
}

// loginAnswer decides a login call as WeChat does. Callers hold s.mu.
func (s *Server) loginAnswer(path string, q url.Values, code string, refresh bool, now time.Time) map[string]any {
	appid := q.Get("appid")
	if appid == "" {
		return errReply(41002, "")
	}
	component := path == PathComponentJSCode2Session || path == PathComponentAccessToken || path == PathComponentRefreshToken
	switch {
	case component:
		if e := s.componentLoginError(q.Get("component_appid"), q.Get("component_access_token"), appid, now); e != nil {
			return e
		}
	case path == PathOAuthRefreshToken: // needs no secret
	default:
		a := s.apps[appid]
		switch {
		case a == nil || a.secret == "":
			return errReply(40013, "")
		case q.Get("secret") == "":
			return errReply(41004, "")
		case q.Get("secret") != a.secret: // a reset ends the old one at once
			return errReply(40125, "")
		case a.frozen:
			return errReply(40243, "")
		}
	}
	grant := "authorization_code"
	if refresh {
		grant = "refresh_token"
	}
	if q.Get("grant_type") != grant {
		return errReply(40002, "")
	}
	if refresh {
		return s.renewWebLogin(appid, q.Get("refresh_token"), now)
	}
	web := path == PathOAuthAccessToken || path == PathComponentAccessToken
	c, ok := s.logins().codes[code]
	switch {
	case !ok || c.appid != appid || c.web != web || now.Sub(c.issued) >= loginCodeLifetime:
		return errReply(40029, "invalid code")
	case c.used:
		return errReply(40163, "code been used")
	}
	c.used = true
	if web {
		return s.webLogin(appid, c.user, c.scope, now)
	}
	return map[string]any{"openid": OpenID(appid, c.user), "session_key": sessionKey(), "unionid": UnionID(c.user)}
}

// componentLoginError is the answer to a component login call whose
// platform, token or account does not check out, or nil. Callers hold
// s.mu.
func (s *Server) componentLoginError(componentAppID, token, appid string, now time.Time) map[string]any {
	if e := s.componentError(componentAppID, token, now); e != nil {
		return e
	}
	if !s.platforms[componentAppID].authorized[appid] {
		return errReply(61003, "component is not authorized by this account")
	}
	return nil
}

// webLogin issues a web login's user token and refresh token. Callers hold
// s.mu.
func (s *Server) webLogin(appid, user, scope string, now time.Time) map[string]any {
	refresh := s.unique("webrefresh")
	s.logins().refresh[refresh] = &webRefresh{appid: appid, user: user, scope: scope, expires: now.Add(webRefreshLifetime)}
	return s.webTokens(appid, user, scope, refresh, now)
}

// renewWebLogin answers a refresh of a web login. Callers hold s.mu.
func (s *Server) renewWebLogin(appid, refresh string, now time.Time) map[string]any {
	r, ok := s.logins().refresh[refresh]
	switch {
	case !ok || r.appid != appid:
		return errReply(40030, "invalid refresh_token")
	case !now.Before(r.expires):
		return errReply(42002, "refresh_token timeout")
	}
	return s.webTokens(appid, r.user, r.scope, refresh, now)
}

// webTokens issues a web login's user token. Callers hold s.mu.
func (s *Server) webTokens(appid, user, scope, refresh string, now time.Time) map[string]any {
	token := s.unique("webtoken")
	s.logins().users[token] = &webRefresh{appid: appid, user: user, scope: scope, expires: now.Add(webAccessTokenExpiry * time.Second)}
	return map[string]any{"access_token": token, "expires_in": webAccessTokenExpiry, "refresh_token": refresh,
		"openid": OpenID(appid, user), "scope": scope, "unionid": UnionID(user)}
}

// serveUser answers a web login's own calls: the user's profile
// (/sns/userinfo, with scope snsapi_userinfo) or whether the user's token
// works (/sns/auth), with the user's access_token and openid.
func (s *Server) serveUser(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	u, ok := s.logins().users[q.Get("access_token")]
	s.mu.Unlock()
	switch {
	case q.Get("access_token") == "":
		writeJSON(w, errReply(41001, ""))
	case !ok || !s.cfg.Now().Before(u.expires):
		writeJSON(w, errReply(40001, ""))
	case q.Get("openid") != OpenID(u.appid, u.user):
		writeJSON(w, errReply(40003, "invalid openid"))
	case r.URL.Path == PathUserAuth:
		writeJSON(w, map[string]any{"errcode": 0, "errmsg": "ok"})
	case u.scope != "snsapi_userinfo":
		writeJSON(w, errReply(48001, "api unauthorized"))
	default:
		writeJSON(w, map[string]any{"openid": q.Get("openid"), "nickname": u.user, "unionid": UnionID(u.user)})
	}
}

func sessionKey() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}
