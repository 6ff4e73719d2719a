package fakewechat

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/wxtoken/wxtoken/internal/wxcrypt"
)

// The fake open platform (开放平台): a third-party platform's verify
// tickets, pushed encrypted to its callback URL; its component token,
// fetched with a ticket; and its authorizers' tokens, fetched with the
// component token and each authorizer's refresh token, which the fake
// replaces at every fetch (the one before stops working: 61023).
const (
	PathComponentToken = "/cgi-bin/component/api_component_token"
	PathStartPush      = "/cgi-bin/component/api_start_push_ticket"
	PathQueryAuth      = "/cgi-bin/component/api_query_auth"
	PathAuthorizerTok  = "/cgi-bin/component/api_authorizer_token"
)

// verifyTicketLifetime is how long a component_verify_ticket works: 12 h.
const verifyTicketLifetime = 12 * time.Hour

// authCodeLifetime is how long an authorization code can be exchanged.
const authCodeLifetime = 10 * time.Minute

type platform struct {
	secret     string
	crypter    *wxcrypt.Crypter
	tickets    map[string]time.Time   // every ticket pushed, to its expiry
	startPush  int                    // api_start_push_ticket calls
	codes      map[string]authCode    // authorization codes not yet exchanged
	refresh    map[string]refreshPair // an authorizer's refresh tokens that work
	authorized map[string]bool
}

// refreshPair is an authorizer's refresh tokens that work: the newest, and
// the one it was issued for, until the newest is used.
type refreshPair struct{ newest, used string }

func (p refreshPair) accepts(token string) bool {
	return token != "" && (token == p.newest || token == p.used)
}

type authCode struct {
	authorizer string
	expires    time.Time
}

// AddPlatform registers a third-party platform: its component appid and
// secret, and the message token and EncodingAESKey its pushes are signed
// and encrypted with.
func (s *Server) AddPlatform(componentAppID, secret, token, encodingAESKey string) error {
	c, err := wxcrypt.New(token, encodingAESKey, componentAppID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.platforms[componentAppID] = &platform{secret: secret, crypter: c, tickets: map[string]time.Time{},
		codes: map[string]authCode{}, refresh: map[string]refreshPair{}, authorized: map[string]bool{}}
	return nil
}

// StartPushCalls is the number of api_start_push_ticket calls for the
// platform.
func (s *Server) StartPushCalls(componentAppID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.platforms[componentAppID]; p != nil {
		return p.startPush
	}
	return 0
}

// RefreshToken is the authorizer's newest refresh token ("" if none).
func (s *Server) RefreshToken(componentAppID, authorizer string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.platforms[componentAppID]; p != nil {
		return p.refresh[authorizer].newest
	}
	return ""
}

// RefreshTokenWorks reports whether api_authorizer_token would take token
// for the authorizer now.
func (s *Server) RefreshTokenWorks(componentAppID, authorizer, token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.platforms[componentAppID]
	return p != nil && p.authorized[authorizer] && p.refresh[authorizer].accepts(token)
}

// LostRefreshes is the number of refreshes made with the refresh token
// before the newest: the answer that carried the newest never reached its
// store.
func (s *Server) LostRefreshes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lostRefreshes
}

// RefreshSerial is the order in which the fake issued a refresh token (1
// for the first it issued of all), or 0 for one it never issued.
func (s *Server) RefreshSerial(token string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshSerials[token]
}

// GrantRefreshToken has authorizer authorize the platform without an
// event, and returns its refresh token: the token another system stored,
// for `wxtoken authorizers import`.
func (s *Server) GrantRefreshToken(componentAppID, authorizer string) (string, error) {
	var token string
	_, err := s.changePlatform(componentAppID, func(p *platform) {
		p.authorized[authorizer] = true
		token = s.newRefreshToken()
		p.refresh[authorizer] = refreshPair{newest: token}
	})
	return token, err
}

// newRefreshToken mints a refresh token and records its order. Callers
// hold s.mu.
func (s *Server) newRefreshToken() string {
	token := s.unique("refreshtoken@@@")
	s.refreshSerials[token] = len(s.refreshSerials) + 1
	return token
}

// An event the open platform pushes, before encryption.
type platformEvent struct {
	XMLName    xml.Name `xml:"xml"`
	AppID      string   `xml:"AppId"`
	CreateTime int64    `xml:"CreateTime"`
	InfoType   string   `xml:"InfoType"`
	Ticket     string   `xml:"ComponentVerifyTicket,omitempty"`
	Authorizer string   `xml:"AuthorizerAppid,omitempty"`
	Code       string   `xml:"AuthorizationCode,omitempty"`
	CodeExpiry int64    `xml:"AuthorizationCodeExpiredTime,omitempty"`
}

// PushTicket makes a new verify ticket for the platform and pushes it to
// callbackURL, as WeChat does every 10 minutes. It returns the ticket and
// the callback's answer, which WeChat wants to be "success".
func (s *Server) PushTicket(ctx context.Context, callbackURL, componentAppID string) (ticket, answer string, err error) {
	now := s.cfg.Now()
	p, err := s.changePlatform(componentAppID, func(p *platform) {
		ticket = s.unique("ticket@@@")
		p.tickets[ticket] = now.Add(verifyTicketLifetime)
	})
	if err != nil {
		return "", "", err
	}
	answer, err = s.push(ctx, callbackURL, p, platformEvent{AppID: componentAppID, CreateTime: now.Unix(),
		InfoType: "component_verify_ticket", Ticket: ticket})
	return ticket, answer, err
}

// changePlatform runs change on the platform under s.mu, and returns it.
func (s *Server) changePlatform(componentAppID string, change func(*platform)) (*platform, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.platforms[componentAppID]
	if p == nil {
		return nil, fmt.Errorf("fakewechat: no platform %s", componentAppID)
	}
	change(p)
	return p, nil
}

// unique returns prefix and a value minted for it. Callers hold s.mu.
func (s *Server) unique(prefix string) string {
	s.serial++
	return prefix + s.mint()
}

// Authorize has authorizer authorize the platform and pushes the
// "authorized" event, with the code that api_query_auth exchanges for the
// authorizer's tokens.
func (s *Server) Authorize(ctx context.Context, callbackURL, componentAppID, authorizer string) (string, error) {
	return s.authorize(ctx, callbackURL, componentAppID, authorizer, "authorized")
}

// UpdateAuthorization has authorizer change what it authorized, and pushes
// the "updateauthorized" event with a new code.
func (s *Server) UpdateAuthorization(ctx context.Context, callbackURL, componentAppID, authorizer string) (string, error) {
	return s.authorize(ctx, callbackURL, componentAppID, authorizer, "updateauthorized")
}

func (s *Server) authorize(ctx context.Context, callbackURL, componentAppID, authorizer, infoType string) (string, error) {
	now := s.cfg.Now()
	var code string
	p, err := s.changePlatform(componentAppID, func(p *platform) {
		code = s.unique("queryauthcode@@@")
		p.codes[code] = authCode{authorizer: authorizer, expires: now.Add(authCodeLifetime)}
		p.authorized[authorizer] = true
	})
	if err != nil {
		return "", err
	}
	return s.push(ctx, callbackURL, p, platformEvent{AppID: componentAppID, CreateTime: now.Unix(), InfoType: infoType,
		Authorizer: authorizer, Code: code, CodeExpiry: now.Add(authCodeLifetime).Unix()})
}

// Unauthorize has authorizer withdraw its authorization, and pushes the
// "unauthorized" event: its refresh token stops working.
func (s *Server) Unauthorize(ctx context.Context, callbackURL, componentAppID, authorizer string) (string, error) {
	p, err := s.changePlatform(componentAppID, func(p *platform) {
		delete(p.authorized, authorizer)
		delete(p.refresh, authorizer)
	})
	if err != nil {
		return "", err
	}
	return s.push(ctx, callbackURL, p, platformEvent{AppID: componentAppID, CreateTime: s.cfg.Now().Unix(), InfoType: "unauthorized",
		Authorizer: authorizer})
}

// push encrypts ev and posts it to callbackURL as WeChat does: the
// ciphertext in an XML envelope, the signature, timestamp and nonce in the
// query.
func (s *Server) push(ctx context.Context, callbackURL string, p *platform, ev platformEvent) (string, error) {
	plain, err := xml.Marshal(ev)
	if err != nil {
		return "", err
	}
	timestamp, nonce := strconv.FormatInt(ev.CreateTime, 10), strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
	encrypted, sig := p.crypter.Seal(plain, timestamp, nonce)
	body := fmt.Sprintf("<xml><AppId><![CDATA[%s]]></AppId><Encrypt><![CDATA[%s]]></Encrypt></xml>", ev.AppID, encrypted)
	u, err := url.Parse(callbackURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("timestamp", timestamp)
	q.Set("nonce", nonce)
	q.Set("encrypt_type", "aes")
	q.Set("msg_signature", sig)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewBufferString(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "text/xml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return string(answer), fmt.Errorf("fakewechat: the callback answered %s", resp.Status)
	}
	return string(answer), err
}

// servePlatform answers the component APIs. Each fetch is counted, and
// takes the faults injected, under the appid it is for: the component
// appid for its token, the authorizer's for theirs.
func (s *Server) servePlatform(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return
	}
	var req struct {
		ComponentAppID    string `json:"component_appid"`
		ComponentSecret   string `json:"component_appsecret"`
		StartPushSecret   string `json:"component_secret"`
		Ticket            string `json:"component_verify_ticket"`
		AuthorizationCode string `json:"authorization_code"`
		AuthorizerAppID   string `json:"authorizer_appid"`
		AuthorizerRefresh string `json:"authorizer_refresh_token"`
	}
	if json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req) != nil {
		writeJSON(w, errReply(47001, ""))
		return
	}
	componentToken := r.URL.Query().Get("component_access_token")
	switch r.URL.Path {
	case PathComponentToken:
		s.serveFetch(w, r, req.ComponentAppID, func(a *app, now time.Time) map[string]any {
			p := s.platforms[req.ComponentAppID]
			switch {
			case p == nil:
				return errReply(61011, "invalid component")
			case req.ComponentSecret != p.secret:
				return errReply(40125, "")
			}
			expires, ok := p.tickets[req.Ticket]
			switch {
			case !ok:
				return errReply(61006, "component ticket is invalid")
			case !now.Before(expires):
				return errReply(61005, "component ticket is expired")
			}
			if spent := s.take(req.ComponentAppID, PathComponentToken, now); spent != nil {
				return spent
			}
			t := s.issue(req.ComponentAppID, a, now)
			return map[string]any{"component_access_token": t.value, "expires_in": int(s.cfg.ExpiresIn / time.Second)}
		})
	case PathStartPush:
		s.mu.Lock()
		p := s.platforms[req.ComponentAppID]
		known, ok := p != nil, p != nil && p.secret == req.StartPushSecret
		if ok {
			p.startPush++
		}
		s.mu.Unlock()
		switch {
		case !known:
			writeJSON(w, errReply(61011, "invalid component"))
			return
		case !ok:
			writeJSON(w, errReply(40125, ""))
			return
		}
		writeJSON(w, map[string]any{"errcode": 0, "errmsg": "ok"})
	case PathQueryAuth:
		s.mu.Lock()
		answer := s.queryAuth(req.ComponentAppID, componentToken, req.AuthorizationCode, s.cfg.Now())
		s.mu.Unlock()
		writeJSON(w, answer)
	case PathAuthorizerTok:
		s.serveFetch(w, r, req.AuthorizerAppID, func(a *app, now time.Time) map[string]any {
			if e := s.componentError(req.ComponentAppID, componentToken, now); e != nil {
				return e
			}
			p := s.platforms[req.ComponentAppID]
			pair := p.refresh[req.AuthorizerAppID]
			if !p.authorized[req.AuthorizerAppID] || !pair.accepts(req.AuthorizerRefresh) {
				return errReply(61023, "refresh_token is invalid")
			}
			// Counted against the platform: the call is the platform's, made
			// with its component token, and quota/get answers a component
			// path only to a component token.
			if spent := s.take(req.ComponentAppID, PathAuthorizerTok, now); spent != nil {
				return spent
			}
			if req.AuthorizerRefresh != pair.newest {
				s.lostRefreshes++
			}
			return s.authorizerTokens(p, req.AuthorizerAppID, req.AuthorizerRefresh, a, now)
		})
	}
}

// componentError is the answer to a call with a component token that does
// not work, or nil. Callers hold s.mu.
func (s *Server) componentError(componentAppID, token string, now time.Time) map[string]any {
	if s.platforms[componentAppID] == nil {
		return errReply(61011, "invalid component")
	}
	if ok, code := s.valid(token, now); !ok || s.tokens[token].appid != componentAppID {
		if code == 0 {
			code = 40001
		}
		return errReply(code, "")
	}
	return nil
}

// queryAuth exchanges an authorization code, once. Callers hold s.mu.
func (s *Server) queryAuth(componentAppID, componentToken, code string, now time.Time) map[string]any {
	if e := s.componentError(componentAppID, componentToken, now); e != nil {
		return e
	}
	if spent := s.take(componentAppID, PathQueryAuth, now); spent != nil {
		return spent
	}
	p := s.platforms[componentAppID]
	c, ok := p.codes[code]
	delete(p.codes, code)
	if !ok || !now.Before(c.expires) {
		return errReply(61010, "code is expired")
	}
	info := s.authorizerTokens(p, c.authorizer, "", s.app(c.authorizer), now)
	info["authorizer_appid"] = c.authorizer
	info["func_info"] = []any{}
	return map[string]any{"authorization_info": info}
}

// authorizerTokens issues an authorizer a token and a new refresh token for
// the one used ("" for an authorization code): any other stops working.
// Callers hold s.mu.
func (s *Server) authorizerTokens(p *platform, authorizer, used string, a *app, now time.Time) map[string]any {
	t := s.issue(authorizer, a, now)
	refresh := s.newRefreshToken()
	p.refresh[authorizer] = refreshPair{newest: refresh, used: used}
	return map[string]any{"authorizer_access_token": t.value, "expires_in": int(s.cfg.ExpiresIn / time.Second),
		"authorizer_refresh_token": refresh}
}
