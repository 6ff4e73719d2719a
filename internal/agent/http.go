package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Request limits. The header limit is the server's: net/http reads 4 KiB
// past MaxHeaderBytes, so a request line and headers of 16 KiB pass and
// more get 431. The URL's is checked here.
const (
	maxHeaderBytes = 12 << 10
	maxURL         = 4 << 10
	headerTimeout  = 5 * time.Second // for a request's headers to arrive
)

// exchange is one request, its caller and what the metrics say of it.
type exchange struct {
	w       http.ResponseWriter
	r       *http.Request
	caller  caller
	class   string // the path class, for the metrics
	outcome string
	path    string // the WeChat path or /v1/ path asked, without an /app/KEY/ prefix

	secret, secretIn string // the secret parameter the request carried, and where (secrets.go)

	clearWriteDeadline bool // bound set one
}

// finish counts the request and lifts its write deadline: it is the
// connection's, and the next request on it starts afresh.
func (a *Agent) finish(x *exchange) {
	if x.clearWriteDeadline {
		http.NewResponseController(x.w).SetWriteDeadline(time.Time{})
	}
	a.reportSecret(x)
	a.metrics.observe(x)
}

func (x *exchange) header() http.Header { return x.w.Header() }

func (x *exchange) writeHeader(status int) { x.w.WriteHeader(status) }

// writeJSON answers v with status.
func (x *exchange) writeJSON(status int, v any) {
	x.header().Set("Content-Type", "application/json; charset=utf-8")
	x.header().Set("Cache-Control", "no-store")
	// No newline after the JSON, as WeChat writes none: an SDK that
	// escapes control characters before parsing chokes on one.
	b, _ := json.Marshal(v)
	x.header().Set("Content-Length", strconv.Itoa(len(b)))
	x.writeHeader(status)
	x.w.Write(b)
}

// fail answers the own API's error shape.
func (x *exchange) fail(status int, code, format string, args ...any) {
	x.outcome = code
	x.writeJSON(status, struct {
		Error apiError `json:"error"`
	}{apiError{Code: code, Message: fmt.Sprintf(format, args...)}})
}

// wechatError answers WeChat's error shape: an SDK reads errcode, whatever
// the status.
func (x *exchange) wechatError(status, errcode int, outcome, format string, args ...any) {
	x.outcome = outcome
	x.writeJSON(status, map[string]any{"errcode": errcode, "errmsg": "wxtoken agent: " + fmt.Sprintf(format, args...)})
}

// Server returns an http.Server for the agent's handler with its limits:
// headers within 5 s and 16 KiB, idle connections closed after a minute.
func (a *Agent) Server() *http.Server {
	return &http.Server{
		Handler:           http.HandlerFunc(a.serveHTTP),
		ReadHeaderTimeout: headerTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       time.Minute,
		// A bad request (a TLS handshake that failed, say) is the
		// client's problem, not the agent's.
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
}

func (a *Agent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{w: w, r: r, class: "other", outcome: "ok"}
	defer a.finish(x)

	// A body must arrive within BodyTimeout: a client sending a byte a
	// second is cut off. (Only a body: for a request with none, net/http
	// already reads the connection to see it close, and a deadline there
	// would end the connection, and every later request on it.) The
	// deadline is the connection's: it is lifted once the body is in. A
	// request that may take long bounds the writing of its answer (bound).
	if r.Body != http.NoBody {
		// Lifted by bodyRead once the body is in; a body not read whole
		// keeps it, and net/http's discarding the rest is cut off too.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(a.cfg.BodyTimeout))
	}

	switch r.URL.Path {
	case "/healthz", "/readyz", "/metrics":
		x.class = "ops"
		a.serveOps(x)
		return
	}
	if len(r.RequestURI) > maxURL {
		x.class = "bad"
		x.wechatError(http.StatusRequestURITooLong, -1, "bad_request", "the URL is over %d bytes", maxURL)
		return
	}
	if why := badPath(r); why != "" {
		x.class = "bad"
		x.wechatError(http.StatusBadRequest, -1, "bad_request", "bad path: %s", why)
		return
	}
	c, ok := a.clients.Load().identify(r)
	if !ok {
		x.class = "bad"
		x.header().Set("WWW-Authenticate", `Bearer realm="wxtoken agent"`)
		x.wechatError(http.StatusUnauthorized, -1, "unauthorized", "unauthorized: send Authorization: Bearer TOKEN with a token of the auth file")
		return
	}
	x.caller = c
	path := collapseSlashes(r.URL.Path)
	x.carried(querySecret(r.URL.RawQuery), "query")
	if rest, ok := strings.CutPrefix(path, "/v1/"); ok {
		x.path = path
		a.serveAPI(x, rest)
		return
	}
	key := ""
	if rest, ok := strings.CutPrefix(path, "/app/"); ok {
		var tail string
		key, tail, _ = strings.Cut(rest, "/")
		_, kind := kv.SplitKey(key)
		if kv.ValidateKey(key) != nil || kind != kv.KindToken {
			x.class = "bad"
			x.wechatError(http.StatusOK, 40013, "unknown_key", "/app/KEY/: %.64q is not an appid or a WeCom corpid-agent", key)
			return
		}
		path = "/" + tail
	}
	x.path = path
	a.serveWeChat(x, key, path)
}

// badPath says what is wrong with a path that could not be WeChat's, or
// could mean another one once cleaned: dot segments, escaped slashes,
// backslashes and control characters. (Empty segments are not: SDKs make
// them, joining a base URL ending in "/" to "/cgi-bin/..."; the path is
// read with them collapsed.)
func badPath(r *http.Request) string {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/") {
		return "not absolute"
	}
	// The escaped form has a "%" only if the client escaped something;
	// most paths are read once, with no allocation.
	if raw := r.URL.RawPath; raw != "" && strings.Contains(raw, "%") {
		lower := strings.ToLower(raw)
		if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
			return "an escaped slash or a backslash"
		}
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c < 0x20 || c == 0x7f:
			return "a control character"
		case c == '\\':
			return "an escaped slash or a backslash"
		case c == '.' && p[i-1] == '/': // p[0] is '/'
			rest := p[i:]
			if rest == "." || rest == ".." || strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
				return "a dot segment"
			}
		}
	}
	return ""
}

// collapseSlashes makes every run of slashes in p one.
func collapseSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// longestCall is the longest a proxied call may take: two calls to WeChat
// and the wait for a new token between them.
func (a *Agent) longestCall() time.Duration { return 2*a.cfg.UpstreamTimeout + a.cfg.RefreshTimeout }

// bound makes a request that may take up to d (a long poll, a refresh, a
// proxied call) answer within d and BodyTimeout more, or lose its
// connection: a client that stops reading is let go. The deadline ends
// with the request. An answer written at once needs none: it fits in the
// socket's buffer.
func (a *Agent) bound(x *exchange, d time.Duration) {
	rc := http.NewResponseController(x.w)
	rc.SetWriteDeadline(time.Now().Add(d + a.cfg.BodyTimeout))
	x.clearWriteDeadline = true
}

// bodyRead lifts a request's read deadline once its body is in whole: the
// answer may take longer than the body took, and net/http reads on to see
// the connection close.
func bodyRead(x *exchange) { http.NewResponseController(x.w).SetReadDeadline(time.Time{}) }

func (a *Agent) serveOps(x *exchange) {
	switch x.r.URL.Path {
	case "/healthz":
		x.header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(x.w, "ok")
	case "/readyz":
		x.header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := a.Ready(); err != nil {
			x.outcome = "not_ready"
			x.writeHeader(http.StatusServiceUnavailable)
			if a.clients.Load() != nil {
				// No key names to whoever asks: the log has them.
				fmt.Fprintln(x.w, "not ready")
				return
			}
			fmt.Fprintln(x.w, "not ready:", err)
			return
		}
		fmt.Fprintln(x.w, "ok")
	case "/metrics":
		a.metrics.handler.ServeHTTP(x.w, x.r)
	}
}
