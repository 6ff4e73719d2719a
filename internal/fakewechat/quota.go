package fakewechat

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// The quota APIs (WECHAT.md §5, §8): every call an app's credential got
// served counts against (app, path) for the China day, whoever made it: the
// fake cannot tell wxtoken from a second client with the same secret, and
// neither can WeChat. A call refused before it was served (a wrong secret, a
// dead token, the whitelist, the limit itself) does not count.
const (
	PathQuotaGet      = "/cgi-bin/openapi/quota/get"
	PathQuotaClear    = "/cgi-bin/openapi/quota/clear"
	PathClearQuota    = "/cgi-bin/clear_quota"
	PathClearQuotaV2  = "/cgi-bin/clear_quota/v2"
	PathRidGet        = "/cgi-bin/openapi/rid/get"
	PathGetTicket     = "/cgi-bin/ticket/getticket"
	PathToken         = "/cgi-bin/token"
	PathStableToken   = "/cgi-bin/stable_token"
	PathGetCallbackIP = "/cgi-bin/getcallbackip"
)

// Daily limits per app and path, by default. WeChat documents the token's
// (2000 a day for a new account: Config.DailyQuota; 200 for a test account:
// SetQuotaLimit(appid, PathToken, TestAccountTokenLimit)) and
// stable_token's (500,000). It gives no number for getticket nor the
// component paths (WECHAT.md §7): the fake picks 100,000 for getticket and
// the authorizer token, 2000 for the component token (as the token's), and
// 100,000 for every other path it serves. The platform's paths made with
// its component token (api_authorizer_token, api_query_auth) count against
// the platform.
const (
	TestAccountTokenLimit = 200
	stableTokenLimit      = 500000
	otherPathLimit        = 100000
)

// countedPaths are the paths the fake counts, and quota/get knows; another
// gets 76021. WeCom's paths are not here: WeCom has no quota/get.
var countedPaths = map[string]bool{
	PathToken: true, PathStableToken: true, PathGetTicket: true, PathGetCallbackIP: true,
	PathSendMessage: true, PathUserList: true, PathUploadMedia: true,
	PathComponentToken: true, PathAuthorizerTok: true, PathQueryAuth: true,
	PathQuotaGet: true, PathQuotaClear: true, PathClearQuota: true, PathClearQuotaV2: true, PathRidGet: true,
	PathComponentClearQuota: true, PathComponentClearQuotaV2: true,
}

// quotaBook is every app's calls per path and China day, the limits set
// apart from the defaults, and the clears of each China month (clear.go).
// Callers hold s.mu.
type quotaBook struct {
	used       map[quotaKey]dayCount
	limits     map[quotaKey]int
	skew       map[string]float64 // by appid: what quota/get adds to used, as a fraction
	clears     map[clearKey]int
	unverified map[string]bool
	noClear    map[string]int // paths quota/clear refuses, to the errcode it answers
}

type quotaKey struct{ appid, path string }

// dayCount is a count that belongs to one China day: read on another day,
// it is zero.
type dayCount struct {
	day string
	n   int
}

// quotas returns the quota book. Callers hold s.mu.
func (s *Server) quotas() *quotaBook {
	if s.quota == nil {
		s.quota = &quotaBook{used: map[quotaKey]dayCount{}, limits: map[quotaKey]int{}, skew: map[string]float64{},
			clears: map[clearKey]int{}, unverified: map[string]bool{}, noClear: map[string]int{}}
	}
	return s.quota
}

// limit is appid's daily limit on path; negative: none. Callers hold s.mu.
func (s *Server) limit(appid, path string) int {
	if n, ok := s.quotas().limits[quotaKey{appid, path}]; ok {
		return n
	}
	switch path {
	case PathToken, PathComponentToken:
		return s.cfg.DailyQuota
	case PathStableToken:
		return stableTokenLimit
	}
	return otherPathLimit
}

// used is appid's count on path today. Callers hold s.mu.
func (s *Server) used(appid, path string, now time.Time) int {
	c := s.quotas().used[quotaKey{appid, path}]
	if c.day != chinaDay(now) {
		return 0
	}
	return c.n
}

// take counts a call of appid to path that is about to be served, and
// returns WeChat's 45009 instead when the day's limit is reached: the call
// is then not served, and not counted. Callers hold s.mu.
func (s *Server) take(appid, path string, now time.Time) map[string]any {
	n := s.used(appid, path, now)
	if limit := s.limit(appid, path); limit >= 0 && n >= limit {
		return errReply(45009, "")
	}
	s.quotas().used[quotaKey{appid, path}] = dayCount{day: chinaDay(now), n: n + 1}
	return nil
}

// QuotaUsed is the number of calls to path that appid was served today
// (China time, on the fake's clock), by whoever made them.
func (s *Server) QuotaUsed(appid, path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used(appid, path, s.cfg.Now())
}

// SetQuotaLimit sets appid's daily limit on path: n calls a day, negative
// for none. A call past it gets 45009 until 00:00 China time or a clear.
func (s *Server) SetQuotaLimit(appid, path string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quotas().limits[quotaKey{appid, path}] = n
}

// SetQuotaSkew makes quota/get report appid's used counts off by fraction
// (-0.01 to 0.01), as WeChat says its counts may be ("一般在1%以内").
// The limit itself counts the true calls.
func (s *Server) SetQuotaSkew(appid string, fraction float64) error {
	if math.Abs(fraction) > 0.01 {
		return fmt.Errorf("fakewechat: a quota skew of %g is beyond WeChat's 1%%: use -0.01 to 0.01", fraction)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quotas().skew[appid] = fraction
	return nil
}

// serveQuotaGet answers POST /cgi-bin/openapi/quota/get?access_token=
// {"cgi_path"}: the token's app's limit, used and remain on that path today.
func (s *Server) serveQuotaGet(w http.ResponseWriter, r *http.Request) {
	s.serveWithToken(w, r, func(appid string, platform bool, body []byte, now time.Time) map[string]any {
		path, refused := s.cgiPath(body, platform)
		if refused != nil {
			return refused
		}
		limit, used := s.limit(appid, path), s.used(appid, path, now)
		shown := max(0, int(math.Round(float64(used)*(1+s.quotas().skew[appid]))))
		// A path without a limit (SetQuotaLimit negative) says -1 and 0.
		quota := map[string]any{"daily_limit": max(limit, -1), "used": shown, "remain": max(0, limit-shown)}
		return map[string]any{"errcode": 0, "errmsg": "ok", "quota": quota}
	})
}

// cgiPath reads {"cgi_path"} and checks it as quota/get and quota/clear do:
// 76003 without a leading slash, 76022 for /sns/ paths or a path of the
// other kind of token (a component path asked with an account's token, or
// the reverse), 76021 for a path the fake does not count. Callers hold s.mu.
func (s *Server) cgiPath(body []byte, platform bool) (string, map[string]any) {
	var req struct {
		Path string `json:"cgi_path"`
	}
	if json.Unmarshal(body, &req) != nil {
		return "", errReply(47001, "")
	}
	component := strings.HasPrefix(req.Path, "/cgi-bin/component/")
	switch {
	case !strings.HasPrefix(req.Path, "/"):
		return "", errReply(76003, "")
	case strings.HasPrefix(req.Path, "/sns/"), component != platform:
		return "", errReply(76022, "")
	case !countedPaths[req.Path]:
		return "", errReply(76021, "")
	}
	return req.Path, nil
}

// serveWithToken answers a POST with a JSON body made with an account's or
// a platform's access_token: a dead or unknown token gets its errcode, a
// WeCom one 76022; the call is counted against the token's app; reply
// decides the rest under s.mu.
func (s *Server) serveWithToken(w http.ResponseWriter, r *http.Request, reply func(appid string, platform bool, body []byte, now time.Time) map[string]any) {
	if r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return
	}
	token := r.URL.Query().Get("access_token")
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ok, code := s.valid(token, now)
	switch {
	case !ok:
		writeJSON(w, errReply(code, ""))
		return
	case s.tokens[token].wecom:
		writeJSON(w, errReply(76022, ""))
		return
	}
	appid := s.tokens[token].appid
	if spent := s.take(appid, r.URL.Path, now); spent != nil {
		writeJSON(w, spent)
		return
	}
	writeJSON(w, reply(appid, s.platforms[appid] != nil, body, now))
}
