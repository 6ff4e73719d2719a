// Package fakewechat is an HTTP server that behaves like WeChat's token APIs
// where wxtoken depends on them. /cgi-bin/token: a new token invalidates the
// previous one after an overlap, tokens expire, the fetch has a daily quota
// that resets at 00:00 China time. /cgi-bin/stable_token: normal mode returns
// the current token and the time it has left, and a new one only in the
// current one's last minutes, without ending the old one; forced mode ends
// the old one at once, at most so many times a day and never twice within
// 30 s; its tokens are apart from the classic ones. getcallbackip answers by
// the token's validity. Tests and `wxtoken serve --demo` run against it;
// faults can be injected per app.
//
// Quota (quota.go, clear.go): every call an app's credential got served
// counts against (app, path) for the China day, whoever made it: a second
// client with the same secret is counted as wxtoken is (Issue is not: it
// is the fake's own shortcut). A call refused first (a wrong secret, a
// dead token, the whitelist) does not count, nor one refused for the limit:
// each path has a daily limit (the token's Config.DailyQuota, 2000;
// stable_token 500,000; 100,000 for the rest, where WeChat gives no number;
// SetQuotaLimit per app) past which calls get 45009 until 00:00 China time
// on the fake's clock. api_authorizer_token counts against the platform,
// whose component token asks quota/get for it. quota/get answers
// {daily_limit, used, remain} (used off by SetQuotaSkew, up to 1%), with
// 76003, 76021 and 76022 for paths it does not take. quota/clear resets one
// path (50 a month); clear_quota (with a token) and clear_quota/v2 (with
// the secret, in the body or the query) reset every path from the
// account's 10 a month, which ConsoleClear spends too; past a budget 48006,
// an unverified account (SetVerified) 48001; months are China months.
//
// rid (rid.go): every error answer's errmsg ends in " rid: <id>", and the
// fake keeps the request by that rid for 7 days on its clock, with every
// secret, token and code in it replaced; rid/get shows it to the account it
// belongs to only, and never for /sns/ APIs (76001).
package fakewechat

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Config sets the fake's behaviour. Zero fields take WeChat's values.
type Config struct {
	ExpiresIn   time.Duration    // lifetime of a token; 7200s
	Overlap     time.Duration    // how long a replaced token keeps working; 5m (negative: none)
	DailyQuota  int              // token (and component token) fetches per app per China day; 2000 (negative: unlimited)
	TokenLength int              // characters per token; 152
	Now         func() time.Time // clock; time.Now

	// StableRenewBefore is how long before its expiry a stable token is
	// replaced by a normal-mode call; 5m.
	StableRenewBefore time.Duration
	// ForceLimit is the forced stable_token refreshes per app per China
	// day; 20. ForceSpacing is the least time between two: a forced call
	// sooner returns the current token unchanged; 30s.
	ForceLimit   int
	ForceSpacing time.Duration

	// TicketExpiresIn is a JS-SDK ticket's lifetime; 7200s. getticket
	// says it for every answer, also when it returns a ticket issued
	// earlier.
	TicketExpiresIn time.Duration

	// WeComTokensPerMinute bounds a WeCom app's gettoken calls in a
	// calendar minute; more get 45009 (frequency limit); 60.
	WeComTokensPerMinute int
	// WeComTicketsPerHour bounds a WeCom app's ticket calls of one type
	// in a sliding hour (100), and WeComCorpTicketsPerHour a corp's
	// jsapi ticket calls (400); more get 45009.
	WeComTicketsPerHour, WeComCorpTicketsPerHour int

	// ClearAPILimit is quota/clear's resets per account and China month;
	// 50. ClearAccountLimit is the whole-account resets per account and
	// China month, shared by clear_quota, clear_quota/v2 and the console;
	// 10. Negative: unlimited. More get 48006 (clear.go).
	ClearAPILimit, ClearAccountLimit int
}

// Fault replaces the normal answer of one token fetch.
type Fault struct {
	ErrCode int           // answer {"errcode":ErrCode,"errmsg":ErrMsg} when not zero
	ErrMsg  string        // defaults to a WeChat-like message for ErrCode
	Status  int           // HTTP status when not 200; Body (or an HTML page) is sent
	Body    []byte        // raw body to send instead of JSON
	Header  http.Header   // headers to add, a redirect's Location say
	Delay   time.Duration // wait before answering, or until the client gives up
	Panic   bool          // abort the connection without an answer
}

// Server is the fake WeChat API. It is safe for concurrent use.
type Server struct {
	cfg Config

	mu             sync.Mutex
	apps           map[string]*app
	wecom          map[string]string      // "<corpid> <corpsecret>" -> the WeCom app's key
	corpTickets    map[string][]time.Time // a corp's jsapi ticket calls in the last hour
	tokens         map[string]*issued     // every token that may still work, by value
	apis           map[string]*apiState   // the business APIs' calls, by path
	platforms      map[string]*platform   // third-party platforms, by component appid
	refreshSerials map[string]int         // every refresh token issued, to its order
	lostRefreshes  int                    // refreshes made with the refresh token before the newest
	login          *loginBook             // login codes and calls: login.go
	whitelists     map[string]Whitelist   // IP whitelists, by appid (whitelist.go)
	quota          *quotaBook             // calls per app, path and day; limits; clears (quota.go, clear.go)
	rids           map[string]*ridRecord  // the requests that got an error, by rid (rid.go)
	serial         uint64
	called         chan struct{} // closed and replaced at every token request

	late map[string][]time.Duration // delays of the next answers, by path (late.go)
}

type app struct {
	secret  string
	frozen  bool // the secret is frozen (secrets.go): token calls get 40243
	current *issued
	faults  []Fault // consumed one per fetch
	sticky  *Fault  // answered to every fetch while set
	calls   int     // every token request (either API) naming this app
	issues  int     // tokens issued, by either API
	checks  int     // getcallbackip requests with one of this app's tokens

	stable    *issued   // the current stable token
	forceDay  string    // China-time date forceUsed belongs to
	forceUsed int       // forced refreshes that day
	forced    int       // forced refreshes that issued a token, ever
	lastForce time.Time // the last forced refresh that issued a token

	tickets map[string]*ticketState // by type: jsapi, wx_card; WeCom's jsapi, agent_config
	corpid  string                  // a WeCom app's corp; "" for an official account's
	minute  time.Time               // a WeCom app's current minute of gettoken calls
	inMin   int                     // its calls in that minute
}

type issued struct {
	appid      string
	value      string
	expiresAt  time.Time
	replacedAt time.Time // zero while current
	dead       bool      // revoked, or ended by a forced refresh
	wecom      bool      // WeCom's: a dead one gets 40014, not 40001
}

// New returns a fake with no apps.
func New(cfg Config) *Server {
	if cfg.ExpiresIn <= 0 {
		cfg.ExpiresIn = 7200 * time.Second
	}
	if cfg.Overlap == 0 {
		cfg.Overlap = 5 * time.Minute
	}
	if cfg.DailyQuota == 0 {
		cfg.DailyQuota = 2000
	}
	if cfg.TokenLength <= 0 {
		cfg.TokenLength = 152
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StableRenewBefore <= 0 {
		cfg.StableRenewBefore = 5 * time.Minute
	}
	if cfg.ForceLimit == 0 {
		cfg.ForceLimit = 20
	}
	if cfg.ForceSpacing == 0 {
		cfg.ForceSpacing = 30 * time.Second
	}
	if cfg.TicketExpiresIn <= 0 {
		cfg.TicketExpiresIn = 7200 * time.Second
	}
	if cfg.WeComTokensPerMinute == 0 {
		cfg.WeComTokensPerMinute = 60
	}
	if cfg.WeComTicketsPerHour == 0 {
		cfg.WeComTicketsPerHour = 100
	}
	if cfg.WeComCorpTicketsPerHour == 0 {
		cfg.WeComCorpTicketsPerHour = 400
	}
	if cfg.ClearAPILimit == 0 {
		cfg.ClearAPILimit = 50
	}
	if cfg.ClearAccountLimit == 0 {
		cfg.ClearAccountLimit = 10
	}
	return &Server{cfg: cfg, apps: map[string]*app{}, tokens: map[string]*issued{}, called: make(chan struct{}),
		wecom: map[string]string{}, corpTickets: map[string][]time.Time{}, apis: map[string]*apiState{}, platforms: map[string]*platform{},
		refreshSerials: map[string]int{}}
}

// AddApp registers an app and its AppSecret. Faults injected before keep.
func (s *Server) AddApp(appid, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.app(appid).secret = secret
}

// Inject queues faults answered to the app's next token fetches, in order.
func (s *Server) Inject(appid string, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.app(appid)
	a.faults = append(a.faults, faults...)
}

// Fail answers every token fetch of the app with f until Heal.
func (s *Server) Fail(appid string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.app(appid).sticky = &f
}

// Heal ends Fail and drops queued faults.
func (s *Server) Heal(appid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.app(appid)
	a.sticky, a.faults = nil, nil
}

// Calls is the number of token requests that named appid, failed or not.
func (s *Server) Calls(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.app(appid).calls
}

// WaitCalls waits until appid has had at least n token requests, or ctx ends.
func (s *Server) WaitCalls(ctx context.Context, appid string, n int) error {
	for {
		s.mu.Lock()
		calls, called := s.app(appid).calls, s.called
		s.mu.Unlock()
		if calls >= n {
			return nil
		}
		select {
		case <-called:
		case <-ctx.Done():
			return fmt.Errorf("fakewechat: %s had %d token requests, waited for %d: %w", appid, calls, n, ctx.Err())
		}
	}
}

// Issued is the number of tokens issued to appid.
func (s *Server) Issued(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.app(appid).issues
}

// Checks is the number of getcallbackip requests made with appid's tokens.
func (s *Server) Checks(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.app(appid).checks
}

// Current is the newest token issued to appid ("" before the first).
func (s *Server) Current(appid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.app(appid).current; c != nil {
		return c.value
	}
	return ""
}

// Stable is appid's current stable token ("" before the first).
func (s *Server) Stable(appid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.app(appid).stable; c != nil {
		return c.value
	}
	return ""
}

// Forced is the number of forced stable_token refreshes that issued appid
// a new token.
func (s *Server) Forced(appid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.app(appid).forced
}

// Revoke makes token stop working at once, as WeChat may do to a leaked
// or misused token. It stays its app's current one: a stable_token call
// in normal mode still returns it, and only a forced refresh replaces it.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[token]; ok {
		t.dead = true
	}
}

// Reject makes appid's current tokens, classic and stable, stop working at
// once (Revoke), and returns how many it ended: 0 before the app's first
// token. It is an error for an app the fake does not know.
func (s *Server) Reject(appid string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[appid]
	if !ok || a.secret == "" {
		return 0, fmt.Errorf("fakewechat: no app %q", appid)
	}
	n := 0
	for _, t := range []*issued{a.current, a.stable} {
		if t != nil && !t.dead {
			t.dead = true
			n++
		}
	}
	return n, nil
}

// Issue fetches a token for appid as another client would (a second,
// misbehaving central server, say): it invalidates the previous token after
// the overlap. It counts neither in Calls nor against the quota.
func (s *Server) Issue(appid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issue(appid, s.app(appid), s.cfg.Now()).value
}

// Valid reports whether token works at this moment; errcode says why not.
func (s *Server) Valid(token string) (ok bool, errcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.valid(token, s.cfg.Now())
}

// app returns the named app, creating an unregistered placeholder so that
// counters of unknown appids read as zero. Callers hold s.mu.
func (s *Server) app(appid string) *app {
	a, ok := s.apps[appid]
	if !ok {
		a = &app{}
		s.apps[appid] = a
	}
	return a
}

func (s *Server) valid(token string, now time.Time) (bool, int) {
	if token == "" {
		return false, 41001
	}
	t, ok := s.tokens[token]
	switch {
	case !ok:
		return false, 40001
	case t.dead && t.wecom:
		return false, 40014
	case t.dead:
		return false, 40001
	case !now.Before(t.expiresAt):
		return false, 42001
	case !t.replacedAt.IsZero() && !now.Before(t.replacedAt.Add(s.cfg.Overlap)):
		return false, 40001
	}
	return true, 0
}

// issue mints a token and retires the previous one. Callers hold s.mu.
func (s *Server) issue(appid string, a *app, now time.Time) *issued {
	s.serial++
	t := &issued{appid: appid, value: s.mint(), expiresAt: now.Add(s.cfg.ExpiresIn)}
	if a.current != nil {
		a.current.replacedAt = now
	}
	a.current = t
	a.issues++
	s.tokens[t.value] = t
	s.prune(now)
	return t
}

// prune forgets tokens that stopped working more than an hour ago, so a long
// run stays small while a recently dead token still gets its exact errcode.
func (s *Server) prune(now time.Time) {
	if s.serial%256 != 0 {
		return
	}
	horizon := now.Add(-time.Hour)
	for v, t := range s.tokens {
		end := t.expiresAt
		if r := t.replacedAt.Add(s.cfg.Overlap); !t.replacedAt.IsZero() && r.Before(end) {
			end = r
		}
		if end.Before(horizon) {
			delete(s.tokens, v)
		}
	}
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

func (s *Server) mint() string {
	serial := strconv.FormatUint(s.serial, 36) + "_"
	b := make([]byte, max(s.cfg.TokenLength, len(serial)+1))
	n := copy(b, serial)
	for i := n; i < len(b); i++ {
		b[i] = tokenAlphabet[rand.IntN(len(tokenAlphabet))]
	}
	return string(b)
}

// ServeHTTP answers the token APIs (/cgi-bin/token, /cgi-bin/stable_token,
// WeCom's /cgi-bin/gettoken), the ticket APIs, /cgi-bin/getcallbackip and
// a few business APIs (PathSendMessage, PathUserList, PathUploadMedia) and
// the open platform's component APIs (openplatform.go), and the login paths
// (login.go), and the quota and rid APIs (quota.go, clear.go, rid.go).
// Every error answer's errmsg ends in " rid: <id>", and the request is kept
// by that rid for rid/get.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := s.record(w, r)
	defer s.finish(rec, r, s.ridOwner(r))
	if s.refusedByWhitelist(rec, r) {
		return
	}
	if delay, ok := s.takeLate(r.URL.Path); ok {
		s.answerLate(rec, r, delay)
		return
	}
	s.route(rec, r)
}

// route answers r by its path.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/cgi-bin/token":
		s.serveToken(w, r)
	case "/cgi-bin/stable_token":
		s.serveStable(w, r)
	case "/cgi-bin/ticket/getticket":
		s.serveTicket(w, r)
	case "/cgi-bin/gettoken":
		s.serveWeComToken(w, r)
	case "/cgi-bin/get_jsapi_ticket":
		s.serveWeComTicket(w, r, "jsapi")
	case "/cgi-bin/ticket/get":
		s.serveWeComTicket(w, r, r.URL.Query().Get("type"))
	case "/cgi-bin/getcallbackip":
		s.serveCallbackIP(w, r)
	case PathSendMessage, PathUserList, PathUploadMedia:
		s.serveAPI(w, r)
	case PathComponentToken, PathStartPush, PathQueryAuth, PathAuthorizerTok:
		s.servePlatform(w, r)
	case PathJSCode2Session, PathOAuthAccessToken, PathOAuthRefreshToken,
		PathComponentJSCode2Session, PathComponentAccessToken, PathComponentRefreshToken:
		s.serveLogin(w, r)
	case PathUserInfo, PathUserAuth:
		s.serveUser(w, r)
	case PathQuotaGet:
		s.serveQuotaGet(w, r)
	case PathQuotaClear:
		s.serveQuotaClear(w, r)
	case PathClearQuota:
		s.serveClearQuota(w, r)
	case PathClearQuotaV2:
		s.serveClearQuotaV2(w, r)
	case PathComponentClearQuota:
		s.serveComponentClearQuota(w, r)
	case PathComponentClearQuotaV2:
		s.serveComponentClearQuotaV2(w, r)
	case PathRidGet:
		s.serveRidGet(w, r)
	default:
		writeJSON(w, errReply(40066, ""))
	}
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.serveFetch(w, r, q.Get("appid"), func(a *app, now time.Time) map[string]any {
		return s.tokenReply(q.Get("appid"), q.Get("secret"), q.Get("grant_type"), a, now)
	})
}

// serveFetch counts a token request of appid and answers it with the next
// fault injected, or with reply's answer.
func (s *Server) serveFetch(w http.ResponseWriter, r *http.Request, appid string, reply func(*app, time.Time) map[string]any) {
	now := s.cfg.Now()
	s.mu.Lock()
	a := s.app(appid)
	a.calls++
	close(s.called)
	s.called = make(chan struct{})
	var fault *Fault
	switch {
	case len(a.faults) > 0:
		fault = &a.faults[0]
		a.faults = a.faults[1:]
	case a.sticky != nil:
		fault = a.sticky
	}
	var answer map[string]any
	if fault == nil {
		answer = reply(a, now)
	}
	s.mu.Unlock()

	if fault != nil {
		serveFault(w, r, *fault)
		return
	}
	writeJSON(w, answer)
}

// credentialError is WeChat's answer to a token request with a bad
// grant_type, appid or secret, or nil. Callers hold s.mu.
func credentialError(appid, secret, grantType string, a *app) map[string]any {
	switch {
	case grantType != "client_credential":
		return errReply(40002, "")
	case appid == "":
		return errReply(41002, "")
	case secret == "":
		return errReply(41004, "")
	case a.secret == "":
		return errReply(40013, "")
	case secret != a.secret:
		return errReply(40125, "")
	case a.frozen:
		return errReply(40243, "")
	}
	return nil
}

// tokenReply decides a fetch the way WeChat does. Callers hold s.mu.
func (s *Server) tokenReply(appid, secret, grantType string, a *app, now time.Time) map[string]any {
	if e := credentialError(appid, secret, grantType, a); e != nil {
		return e
	}
	if spent := s.take(appid, PathToken, now); spent != nil {
		return spent
	}
	t := s.issue(appid, a, now)
	return map[string]any{"access_token": t.value, "expires_in": int(s.cfg.ExpiresIn / time.Second)}
}

func (s *Server) serveCallbackIP(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("access_token")
	s.mu.Lock()
	if t, ok := s.tokens[token]; ok {
		s.app(t.appid).checks++
	}
	now := s.cfg.Now()
	ok, code := s.valid(token, now)
	var answer map[string]any
	switch {
	case !ok:
		answer = errReply(code, "")
	default:
		answer = s.take(s.tokens[token].appid, PathGetCallbackIP, now)
	}
	s.mu.Unlock()
	if answer != nil {
		writeJSON(w, answer)
		return
	}
	writeJSON(w, map[string]any{"ip_list": []string{"127.0.0.1"}})
}

func serveFault(w http.ResponseWriter, r *http.Request, f Fault) {
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if f.Panic {
		panic(http.ErrAbortHandler) // net/http drops the connection, no answer
	}
	for k, v := range f.Header {
		w.Header()[k] = v
	}
	if f.Status != 0 && f.Status != http.StatusOK {
		body := f.Body
		if body == nil {
			w.Header().Set("Content-Type", "text/html")
			body = fmt.Appendf(nil, "<html><body><h1>%d %s</h1></body></html>", f.Status, http.StatusText(f.Status))
		}
		w.WriteHeader(f.Status)
		w.Write(body)
		return
	}
	if f.Body != nil {
		w.Header().Set("Content-Type", "application/json; encoding=utf-8")
		w.Write(f.Body)
		return
	}
	writeJSON(w, errReply(f.ErrCode, f.ErrMsg))
}

// messages are WeChat's errmsg texts for the codes the fake answers with.
var messages = map[int]string{
	-1:    "system error",
	40001: "invalid credential, access_token is invalid or not latest",
	40002: "invalid grant_type",
	40013: "invalid appid",
	40014: "invalid access_token",
	40125: "invalid appsecret",
	40164: "invalid ip 203.0.113.7, not in whitelist",
	40243: "AppSecret已被冻结，请登录小程序平台解冻后再次调用。",
	41001: "access_token missing",
	41002: "appid missing",
	44002: "empty post data",
	41004: "appsecret missing",
	42001: "access_token expired",
	60020: "not allow to access from your ip",
	43002: "require POST method",
	47001: "data format error",
	40097: "invalid args",
	40066: "invalid url",
	48001: "api unauthorized",
	48006: "forbid to clear quota because of reaching the limit",
	76001: "rid not found",
	76003: "cgi_path must start with /",
	76021: "cgi_path not found, please check",
	76022: "could not use this cgi_path，no permission",
	45009: "reach max api daily quota limit",
	45011: "api minute-quota reach limit  mustslower  retry next minute",
	89501: "此IP正在等待管理员确认,请联系管理员",
	89503: "此IP调用需要管理员确认,请联系管理员",
}

func errReply(code int, msg string) map[string]any {
	if msg == "" {
		msg = messages[code]
	}
	return map[string]any{"errcode": code, "errmsg": msg + " rid: " + newRid()}
}

// writeJSON answers v as WeChat does: JSON with no newline after it.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	b, _ := json.Marshal(v)
	w.Write(b)
}

// chinaTime is UTC+8, the zone WeChat's daily quota resets in.
var chinaTime = time.FixedZone("CST", 8*60*60)

func chinaDay(t time.Time) string { return t.In(chinaTime).Format(time.DateOnly) }
