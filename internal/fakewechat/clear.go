package fakewechat

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// ClearKind is one of WeChat's monthly budgets of quota resets, per account
// and China month.
type ClearKind int

const (
	// ClearAPI is quota/clear's: one path's count, 50 a month
	// (Config.ClearAPILimit).
	ClearAPI ClearKind = iota
	// ClearAccount is the whole account's: clear_quota, clear_quota/v2 and
	// the console share 10 a month (Config.ClearAccountLimit).
	ClearAccount
)

func (k ClearKind) String() string {
	if k == ClearAPI {
		return "quota/clear"
	}
	return "clear_quota"
}

type clearKey struct {
	appid string
	kind  ClearKind
	month string
}

// chinaMonth is the China-time month a clear is counted in.
func chinaMonth(t time.Time) string { return t.In(chinaTime).Format("2006-01") }

// ClearsThisMonth is the number of clears of kind appid made this China
// month (on the fake's clock), console clears included.
func (s *Server) ClearsThisMonth(appid string, kind ClearKind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quotas().clears[clearKey{appid, kind, chinaMonth(s.cfg.Now())}]
}

// SetVerified sets whether appid is a verified account (认证); accounts are
// verified unless set otherwise. Only a verified account can clear its
// quota (WECHAT.md §8).
func (s *Server) SetVerified(appid string, verified bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quotas().unverified[appid] = !verified
}

// RefuseClear makes quota/clear refuse path with errcode (76021 or 76022),
// as WeChat's single-path reset takes only some paths (the shop's page says
// only /channels/ec/ ones); errcode 0 takes it again. /sns/ paths are
// always refused (76022).
func (s *Server) RefuseClear(path string, errcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if errcode == 0 {
		delete(s.quotas().noClear, path)
		return
	}
	s.quotas().noClear[path] = errcode
}

// ConsoleClear resets appid's quota as a person in WeChat's console does:
// it spends one of the account's monthly clears, shared with clear_quota
// and clear_quota/v2, and fails as they do when none is left or the account
// is not verified.
func (s *Server) ConsoleClear(appid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.clear(appid, ClearAccount, "", s.cfg.Now()); e != nil {
		return fmt.Errorf("fakewechat: the console could not clear %s's quota: %v", appid, e["errmsg"])
	}
	return nil
}

// clear spends one of appid's clears of kind this month and resets its
// count on path today (every path for ClearAccount), or returns WeChat's
// refusal (nil when it cleared): an unverified account gets 48001 (WeChat documents that only
// verified accounts can clear, not the errcode the others get; 48001 "api
// unauthorized" is what it answers for an API an account may not use), a
// spent budget 48006. Callers hold s.mu.
func (s *Server) clear(appid string, kind ClearKind, path string, now time.Time) map[string]any {
	q := s.quotas()
	if q.unverified[appid] {
		return errReply(48001, "")
	}
	key := clearKey{appid, kind, chinaMonth(now)}
	if limit := s.clearLimit(kind); limit >= 0 && q.clears[key] >= limit {
		return errReply(48006, "")
	}
	q.clears[key]++
	for k := range q.used {
		if k.appid == appid && (kind == ClearAccount || k.path == path) {
			delete(q.used, k)
		}
	}
	return nil
}

// cleared is WeChat's answer to a clear: its refusal, or ok.
func cleared(refused map[string]any) map[string]any {
	if refused != nil {
		return refused
	}
	return map[string]any{"errcode": 0, "errmsg": "ok"}
}

func (s *Server) clearLimit(kind ClearKind) int {
	if kind == ClearAPI {
		return s.cfg.ClearAPILimit
	}
	return s.cfg.ClearAccountLimit
}

// serveQuotaClear answers POST /cgi-bin/openapi/quota/clear?access_token=
// {"cgi_path"}: one path of the token's app, from its own monthly budget.
func (s *Server) serveQuotaClear(w http.ResponseWriter, r *http.Request) {
	s.serveWithToken(w, r, func(appid string, platform bool, body []byte, now time.Time) map[string]any {
		path, refused := s.cgiPath(body, platform)
		if refused != nil {
			return refused
		}
		if code := s.quotas().noClear[path]; code != 0 {
			return errReply(code, "")
		}
		return cleared(s.clear(appid, ClearAPI, path, now))
	})
}

// serveClearQuota answers POST /cgi-bin/clear_quota?access_token= {"appid"}:
// the whole account. The token is the account's own, or that of a
// platform it authorized (a component token), whose clear spends the
// account's budget; another account's gets 40013.
func (s *Server) serveClearQuota(w http.ResponseWriter, r *http.Request) {
	s.serveWithToken(w, r, func(caller string, platform bool, body []byte, now time.Time) map[string]any {
		var req struct {
			AppID string `json:"appid"`
		}
		if json.Unmarshal(body, &req) != nil {
			return errReply(47001, "")
		}
		switch {
		case req.AppID == "":
			return errReply(41002, "")
		case req.AppID != caller && !(platform && s.platforms[caller].authorized[req.AppID]):
			return errReply(40013, "")
		}
		return cleared(s.clear(req.AppID, ClearAccount, "", now))
	})
}

// serveClearQuotaV2 answers POST /cgi-bin/clear_quota/v2 with appid and
// appsecret in the JSON body (the newer page) or the query (the older one,
// and silenceper): no token, so it works when the token's quota is spent.
// The IP whitelist applies (whitelist.go). WeChat lists 40013 and not 40125
// among its errors; the fake answers a wrong secret 40125 as every other
// AppSecret API does.
func (s *Server) serveClearQuotaV2(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return
	}
	var req struct {
		AppID  string `json:"appid"`
		Secret string `json:"appsecret"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<10))
	json.Unmarshal(body, &req) // a form in the query is as good
	if q := r.URL.Query(); req.AppID == "" && req.Secret == "" {
		req.AppID, req.Secret = q.Get("appid"), q.Get("appsecret")
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.app(req.AppID)
	switch {
	case req.AppID == "":
		writeJSON(w, errReply(41002, ""))
	case req.Secret == "":
		writeJSON(w, errReply(41004, ""))
	case a.secret == "":
		writeJSON(w, errReply(40013, ""))
	case req.Secret != a.secret:
		writeJSON(w, errReply(40125, ""))
	case a.frozen:
		writeJSON(w, errReply(40243, ""))
	default:
		if spent := s.take(req.AppID, PathClearQuotaV2, now); spent != nil {
			writeJSON(w, spent)
			return
		}
		writeJSON(w, cleared(s.clear(req.AppID, ClearAccount, "", now)))
	}
}
