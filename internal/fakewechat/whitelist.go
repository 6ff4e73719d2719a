package fakewechat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Whitelist is an app's IP whitelist as WeChat keeps it (WECHAT.md §8):
// no API reads or changes it, the console does. An app with none (or an
// empty Allowed) takes calls from every address, as the fake always did.
type Whitelist struct {
	// Allowed are the addresses or CIDR ranges calls may come from.
	Allowed []string
	// Awaiting are addresses WeChat asked the administrator to confirm:
	// calls from them get 89503 until then.
	Awaiting []string
	// EveryAPI is an official account's whitelist, which every server API
	// checks; a mini program's (EveryAPI false) guards only the AppSecret
	// APIs: token, stable_token, jscode2session, oauth2/access_token and
	// the platform's component APIs.
	EveryAPI bool
}

// SetWhitelist sets appid's IP whitelist, checked against each call's
// client address (its TCP peer). A refused call gets WeChat's 40164, whose
// errmsg names the address: "invalid ip 203.0.113.7 ipv6
// ::ffff:203.0.113.7, not in whitelist rid: …". It is not counted in Calls:
// WeChat refuses it before it looks at the secret.
func (s *Server) SetWhitelist(appid string, w Whitelist) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.whitelists == nil {
		s.whitelists = map[string]Whitelist{}
	}
	s.whitelists[appid] = w
}

// refusedByWhitelist answers a call that the whitelist of the app it names
// refuses, and reports whether it did.
func (s *Server) refusedByWhitelist(w http.ResponseWriter, r *http.Request) bool {
	appid, secretAPI := s.appOfCall(r)
	if appid == "" {
		return false
	}
	s.mu.Lock()
	list, ok := s.whitelists[appid]
	s.mu.Unlock()
	if !ok || len(list.Allowed) == 0 || !secretAPI && !list.EveryAPI {
		return false
	}
	addr := clientAddr(r)
	switch {
	case matches(list.Allowed, addr):
		return false
	case matches(list.Awaiting, addr):
		writeJSON(w, errReply(89503, ""))
	default:
		writeJSON(w, errReply(40164, fmt.Sprintf("invalid ip %s ipv6 ::ffff:%s, not in whitelist", addr, addr)))
	}
	return true
}

// appOfCall names the app a call is for, and whether the call is one of
// the AppSecret APIs; "" for a call it cannot tell (WeCom's, which has
// trusted IPs of its own, or an unknown token).
func (s *Server) appOfCall(r *http.Request) (appid string, secretAPI bool) {
	q := r.URL.Query()
	switch r.URL.Path {
	case "/cgi-bin/token":
		return q.Get("appid"), true
	case "/cgi-bin/stable_token":
		return bodyField(r, "appid"), true
	case PathClearQuotaV2:
		if appid := bodyField(r, "appid"); appid != "" {
			return appid, true
		}
		return q.Get("appid"), true
	case PathComponentToken, PathStartPush, PathComponentClearQuotaV2:
		return bodyField(r, "component_appid"), true
	case PathJSCode2Session, PathOAuthAccessToken:
		// A login code exchanged with the AppSecret: among a mini
		// program's "three AppSecret APIs" (WECHAT.md §8).
		return q.Get("appid"), true
	case PathOAuthRefreshToken:
		// Needs no secret: guarded by an official account's whitelist,
		// which guards every API, only.
		return q.Get("appid"), false
	case "/cgi-bin/gettoken", "/cgi-bin/get_jsapi_ticket", "/cgi-bin/ticket/get":
		return "", false
	}
	token := q.Get("access_token")
	if token == "" {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[token]; ok && !t.wecom {
		return t.appid, false
	}
	return "", false
}

// bodyField reads field from r's JSON body and puts the body back for the
// handler.
func bodyField(r *http.Request, field string) string {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<10))
	r.Body = io.NopCloser(bytes.NewReader(body))
	var fields map[string]any
	if json.Unmarshal(body, &fields) != nil {
		return ""
	}
	s, _ := fields[field].(string)
	return s
}

// clientAddr is the address a call came from, as WeChat sees it.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().String()
	}
	return host
}

// matches reports whether addr is one of list's addresses or in one of
// its CIDR ranges.
func matches(list []string, addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for _, entry := range list {
		if strings.Contains(entry, "/") {
			if p, err := netip.ParsePrefix(entry); err == nil && p.Contains(a) {
				return true
			}
			continue
		}
		if e, err := netip.ParseAddr(entry); err == nil && e.Unmap() == a {
			return true
		}
	}
	return false
}
