package fakewechat

import (
	"encoding/json"
	"io"
	"net/http"
)

// A third-party platform's own resets of a spent quota (WECHAT.md §5, §8):
// component/clear_quota with its component token, component/clear_quota/v2
// with its secret (no token; for an authorizer, with its appid). Both
// spend the whole-account budget of the account they clear: the
// platform's own, or the authorizer's. The single-path quota/clear takes a
// component token and a component path as it takes an account's token
// and path (quota.go's cgiPath), and the account-wide clear_quota takes a
// component token for an authorizer (clear.go).
const (
	PathComponentClearQuota   = "/cgi-bin/component/clear_quota"
	PathComponentClearQuotaV2 = "/cgi-bin/component/clear_quota/v2"
)

// serveComponentClearQuota answers POST
// /cgi-bin/component/clear_quota?component_access_token= {"component_appid"}:
// every path of the platform, from its 10 a month. The call is counted
// against the platform.
func (s *Server) serveComponentClearQuota(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ComponentAppID string `json:"component_appid"`
	}
	if !decodePost(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.ComponentAppID == "" {
		writeJSON(w, errReply(41002, ""))
		return
	}
	if e := s.componentError(req.ComponentAppID, r.URL.Query().Get("component_access_token"), now); e != nil {
		writeJSON(w, e)
		return
	}
	if spent := s.take(req.ComponentAppID, PathComponentClearQuota, now); spent != nil {
		writeJSON(w, spent)
		return
	}
	writeJSON(w, cleared(s.clear(req.ComponentAppID, ClearAccount, "", now)))
}

// serveComponentClearQuotaV2 answers POST /cgi-bin/component/clear_quota/v2
// {component_appid, appsecret[, appid]}: with no token, so it works when
// the component token's quota is spent. Without appid it clears the
// platform; with one, an account that authorized the platform (another
// gets 40013), from that account's 10. The secret is the platform's; the
// IP whitelist applies (whitelist.go).
func (s *Server) serveComponentClearQuotaV2(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ComponentAppID string `json:"component_appid"`
		Secret         string `json:"appsecret"`
		AppID          string `json:"appid"`
	}
	if !decodePost(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.platforms[req.ComponentAppID]
	switch {
	case req.ComponentAppID == "":
		writeJSON(w, errReply(41002, ""))
	case req.Secret == "":
		writeJSON(w, errReply(41004, ""))
	case p == nil:
		writeJSON(w, errReply(61011, "invalid component"))
	case req.Secret != p.secret:
		writeJSON(w, errReply(40125, ""))
	case req.AppID != "" && !p.authorized[req.AppID]:
		writeJSON(w, errReply(40013, ""))
	default:
		if spent := s.take(req.ComponentAppID, PathComponentClearQuotaV2, now); spent != nil {
			writeJSON(w, spent)
			return
		}
		target := req.ComponentAppID
		if req.AppID != "" {
			target = req.AppID
		}
		writeJSON(w, cleared(s.clear(target, ClearAccount, "", now)))
	}
}

// decodePost decodes the JSON body of the POST r into v, or answers
// WeChat's refusal (43002 for another method, 47001 for a body that is
// not JSON) and returns false.
func decodePost(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return false
	}
	if json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(v) != nil {
		writeJSON(w, errReply(47001, ""))
		return false
	}
	return true
}
