package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// The agent's own API, under /v1/:
//
//	GET  /v1/credentials/{key}               the value, its revision and expiry; ETag, long poll, text/plain
//	POST /v1/credentials/{key}/refresh       replace the revision named, which WeChat rejected
//	GET  /v1/jssdk/{key}/config?url=         a signed wx.config (url alone, url-encoded)
//	GET  /v1/jssdk/{key}/agent-config?url=   a signed wx.agentConfig (WeCom)
func (a *Agent) serveAPI(x *exchange, rest string) {
	parts := strings.Split(rest, "/")
	route := func(class, method string, serve func()) {
		x.class = class
		if x.r.Method != method {
			x.header().Set("Allow", method)
			x.fail(http.StatusMethodNotAllowed, "method_not_allowed", "use %s", method)
			return
		}
		serve()
	}
	switch {
	case len(parts) == 2 && parts[0] == "credentials":
		route("read", http.MethodGet, func() { a.serveRead(x, parts[1]) })
	case len(parts) == 3 && parts[0] == "credentials" && parts[2] == "refresh":
		route("refresh", http.MethodPost, func() { a.serveRefresh(x, parts[1]) })
	case len(parts) == 3 && parts[0] == "jssdk" && (parts[2] == "config" || parts[2] == "agent-config"):
		route("jssdk", http.MethodGet, func() { a.serveJSSDK(x, parts[1], parts[2]) })
	default:
		x.class = "bad"
		x.fail(http.StatusNotFound, "not_found", "no such path: the API is /v1/credentials/{key}, /v1/credentials/{key}/refresh, /v1/jssdk/{key}/config and /v1/jssdk/{key}/agent-config")
	}
}

// lookup returns the key's subscriber, or answers why there is none.
func (a *Agent) lookup(x *exchange, key string) *followed {
	f, wanted := a.find(x.caller, key)
	switch {
	case f != nil:
		return f
	case wanted:
		x.fail(http.StatusServiceUnavailable, "not_ready", "no value of %s yet", key)
	default:
		x.fail(http.StatusNotFound, "unknown_key", "this agent serves no key %.80q", key)
	}
	return nil
}

// find returns the key's subscriber if it holds a value; else wanted says
// whether the key is served but has none yet. A key the caller may not use
// is found exactly as an unknown one is: not at all.
func (a *Agent) find(c caller, key string) (f *followed, wanted bool) {
	if !c.may(key) { // a key that cannot be one is in neither map
		return nil, false
	}
	if f := a.keys.get(key); f != nil {
		return f, true
	}
	return nil, a.keys.wants(key)
}

// credential is the own API's answer for a key.
type credential struct {
	Key       string `json:"key"`
	Value     string `json:"value"`
	Revision  uint64 `json:"revision"`
	ExpiresAt string `json:"expires_at"`
	ExpiresIn int64  `json:"expires_in"` // seconds left
	Refreshed *bool  `json:"refreshed,omitempty"`
}

func newCredential(key string, t subscriber.Token, now time.Time) credential {
	return credential{Key: key, Value: t.Value, Revision: t.Revision,
		ExpiresAt: t.ExpiresAt.UTC().Format(time.RFC3339), ExpiresIn: secondsLeft(t, now)}
}

// secondsLeft is what a value has left, in whole seconds, as WeChat's
// expires_in counts.
func secondsLeft(t subscriber.Token, now time.Time) int64 {
	return max(int64(t.ExpiresAt.Sub(now)/time.Second), 0)
}

func etag(revision uint64) string { return `"` + strconv.FormatUint(revision, 10) + `"` }

// usable answers why the key's value cannot be used, if it cannot.
func (a *Agent) usable(x *exchange, f *followed) (subscriber.Token, bool) {
	t, err := a.current(x.r.Context(), f)
	switch {
	case errors.Is(err, subscriber.ErrRemoved):
		x.fail(http.StatusGone, "removed", "%s", removedMessage(err))
		return t, false
	case errors.Is(err, subscriber.ErrExpired):
		x.fail(http.StatusServiceUnavailable, "expired", "the value of %s expired at %s and was not replaced (is the refresher running?)",
			f.key, t.ExpiresAt.UTC().Format(time.RFC3339))
		return t, false
	case errors.Is(err, subscriber.ErrClosed):
		x.fail(http.StatusServiceUnavailable, "unavailable", "%s: the agent is stopping", f.key)
		return t, false
	case err != nil:
		x.fail(http.StatusServiceUnavailable, "unavailable", "%s: %v", f.key, err)
		return t, false
	}
	return t, true
}

// removedMessage says why a key is gone, without the subscriber's prefix.
func removedMessage(err error) string {
	return strings.TrimPrefix(err.Error(), subscriber.ErrRemoved.Error()+": ")
}

// expiredGrace is how long a request waits for the successor of a value
// that has just expired. WeChat gives the same ticket (and WeCom the same
// token) until it expires, so the refresher can replace one only after:
// its successor comes within a second or so.
const expiredGrace = 3 * time.Second

// current returns the key's value, waiting up to expiredGrace for the
// successor of one that has expired. A value still expired after that is
// logged, once.
func (a *Agent) current(ctx context.Context, f *followed) (subscriber.Token, error) {
	t, err := f.sub.Current()
	if !errors.Is(err, subscriber.ErrExpired) {
		return t, err
	}
	wctx, cancel := context.WithTimeout(ctx, expiredGrace)
	f.waitNewer(wctx, t.Revision, a.draining)
	cancel()
	t, err = f.sub.Current()
	if errors.Is(err, subscriber.ErrExpired) && f.warnExpired(t.Revision) {
		a.log.Warn("serving no value: it expired and was not replaced (is the refresher running?)",
			"key", f.key, "revision", t.Revision, "expired_at", t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return t, err
}

func (a *Agent) serveRead(x *exchange, key string) {
	var q url.Values // most reads have no query: none is parsed
	if x.r.URL.RawQuery != "" {
		q = x.r.URL.Query()
	}
	text := false
	switch q.Get("format") {
	case "text":
		text = true
	case "json":
	case "":
		accept := x.r.Header.Get("Accept")
		text = strings.Contains(accept, "text/plain") && !strings.Contains(accept, "json")
	default:
		x.fail(http.StatusBadRequest, "bad_request", "format: text or json")
		return
	}
	seen, conditional, err := namedRevision(x.r, q)
	if err != nil {
		x.fail(http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	wait, err := parseWait(q.Get("wait"), a.cfg.MaxWait)
	if err != nil {
		x.fail(http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	f := a.lookup(x, key)
	if f == nil {
		return
	}
	if conditional && wait > 0 {
		a.bound(x, wait)
		ctx, cancel := context.WithTimeout(x.r.Context(), wait)
		a.metrics.polls.Inc()
		f.waitNewer(ctx, seen, a.draining)
		a.metrics.polls.Dec()
		cancel()
	}
	t, ok := a.usable(x, f)
	if !ok {
		return
	}
	answer := f.answer(t, time.Now())
	h := x.header()
	h["Etag"], h["Cache-Control"] = answer.etag, noStore
	if conditional && t.Revision <= seen {
		x.outcome = "not_modified"
		x.writeHeader(http.StatusNotModified)
		return
	}
	if text {
		h["Content-Type"], h["Content-Length"] = textPlain, []string{strconv.Itoa(len(t.Value))}
		x.writeHeader(http.StatusOK)
		io.WriteString(x.w, t.Value)
		return
	}
	h["Content-Type"], h["Content-Length"] = applicationJSON, answer.length
	x.writeHeader(http.StatusOK)
	x.w.Write(answer.json)
}

// Header values of every read, allocated once.
var (
	noStore         = []string{"no-store"}
	textPlain       = []string{"text/plain; charset=utf-8"}
	applicationJSON = []string{"application/json; charset=utf-8"}
)

// renderedAnswer is a read's answer for one revision of a key, as of one
// second: expires_in counts seconds, so the JSON is made again at most
// once a second, not for every read.
type renderedAnswer struct {
	revision uint64
	second   int64 // Unix time the expires_in is counted at
	json     []byte
	length   []string // Content-Length of json
	etag     []string
}

// answer returns the read's answer for t at now, made again only when the
// revision or the second has changed. The answer is immutable: readers
// share it without a lock.
func (f *followed) answer(t subscriber.Token, now time.Time) *renderedAnswer {
	if r := f.rendered.Load(); r != nil && r.revision == t.Revision && r.second == now.Unix() {
		return r
	}
	b, _ := json.Marshal(newCredential(f.key, t, now.Truncate(time.Second)))
	r := &renderedAnswer{revision: t.Revision, second: now.Unix(), json: b,
		length: []string{strconv.Itoa(len(b))}, etag: []string{etag(t.Revision)}}
	f.rendered.Store(r)
	return r
}

// namedRevision returns the revision a read names as seen: ?after=N, or
// If-None-Match with the ETag of one (the newest, if it lists several);
// "*" names every revision.
func namedRevision(r *http.Request, q url.Values) (uint64, bool, error) {
	if after := q.Get("after"); after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return 0, false, errors.New("after: a revision, as the ETag says it")
		}
		return n, true, nil
	}
	var seen uint64
	conditional := false
	inm := r.Header.Get("If-None-Match")
	if strings.TrimSpace(inm) == "*" {
		return math.MaxUint64, true, nil // any value held matches
	}
	for _, tag := range strings.Split(inm, ",") {
		tag = strings.Trim(strings.TrimPrefix(strings.TrimSpace(tag), "W/"), `"`)
		if n, err := strconv.ParseUint(tag, 10, 64); err == nil {
			seen, conditional = max(seen, n), true
		}
	}
	return seen, conditional, nil
}

// parseWait reads a long poll's wait: seconds, or a duration such as
// "25s"; at most limit.
func parseWait(s string, limit time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseUint(s, 10, 32)
		if nerr != nil {
			return 0, errors.New("wait: seconds, or a duration such as 25s")
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, errors.New("wait: not negative")
	}
	return min(d, limit), nil
}

// maxSmallBody bounds the bodies the agent reads itself: a refresh
// request, a stable_token call.
const maxSmallBody = 4 << 10

func (a *Agent) serveRefresh(x *exchange, key string) {
	stale, err := staleRevision(x)
	if err != nil {
		x.fail(http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	f := a.lookup(x, key)
	if f == nil {
		return
	}
	a.bound(x, a.cfg.RefreshTimeout)
	t, ok := a.refresh(x, f, stale, "agent API")
	if !ok {
		return
	}
	c := newCredential(key, t, time.Now())
	refreshed := t.Revision > stale
	c.Refreshed = &refreshed
	x.header().Set("ETag", etag(t.Revision))
	x.writeJSON(http.StatusOK, c)
}

// staleRevision reads a refresh request's stale_revision, from the query or
// from a JSON body.
func staleRevision(x *exchange) (uint64, error) {
	r := x.r
	const need = `stale_revision: the revision WeChat rejected, as {"stale_revision":N} or ?stale_revision=N`
	if s := r.URL.Query().Get("stale_revision"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, errors.New(need)
		}
		return n, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxSmallBody))
	if err != nil {
		return 0, errors.New("the body is over 4 KiB, or did not arrive")
	}
	var req struct {
		StaleRevision *uint64 `json:"stale_revision"`
	}
	if json.Unmarshal(body, &req) != nil || req.StaleRevision == nil {
		return 0, errors.New(need)
	}
	bodyRead(x)
	return *req.StaleRevision, nil
}

// refresh asks the refresher to replace revision stale of f's key and
// waits for the new value; it answers the failure itself.
func (a *Agent) refresh(x *exchange, f *followed, stale uint64, reason string) (subscriber.Token, bool) {
	t, err := a.askRefresh(x.r.Context(), f, stale, reason)
	switch {
	case err == nil:
		return t, true
	case errors.Is(err, subscriber.ErrRemoved):
		x.fail(http.StatusGone, "removed", "%s", removedMessage(err))
	case errors.Is(err, subscriber.ErrRateLimited):
		a.rateLimited(x, f.key, t, err)
	case errors.Is(err, subscriber.ErrUnknownApp):
		x.fail(http.StatusNotFound, "unknown_key", "the refresher keeps no %s", f.key)
	case errors.Is(err, subscriber.ErrUpstream):
		x.fail(http.StatusBadGateway, "upstream", "%s", a.refreshFailure(err))
	case refusedAsBad(err):
		x.fail(http.StatusBadRequest, "bad_request", "%s", a.refreshFailure(err))
	default:
		x.fail(http.StatusServiceUnavailable, "unavailable", "%s", a.refreshFailure(err))
	}
	return t, false
}

// refreshFailure says why a refresh failed, in the words its client needs:
// the refresher's own message, or what did not answer, without the
// prefixes of the packages the error passed through (the log has those).
func (a *Agent) refreshFailure(err error) string {
	var refused *subscriber.RefreshError
	switch {
	case errors.As(err, &refused):
		return refused.Message
	case errors.Is(err, subscriber.ErrUnavailable):
		return fmt.Sprintf("no refresher answered within %s: is wxtoken serve running, and may this agent's NATS user reach it?", a.cfg.RefreshTimeout)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("the refresher answered, but the new value did not arrive within %s", a.cfg.RefreshTimeout)
	case errors.Is(err, context.Canceled):
		return "the request ended before the refresher answered"
	case errors.Is(err, subscriber.ErrClosed):
		return "the agent is stopping"
	}
	return "asking the refresher failed: " + err.Error()
}

// defaultRetryAfter is Retry-After when the refresher does not say when a
// forced refresh may go again (one older than retry_after): the
// refresher's default --min-force-interval, the longest its default waits.
const defaultRetryAfter = 30 * time.Second

// rateLimited answers a refresh the refresher refused because a forced
// refresh of the key ran too recently: with the value held (its revision
// and expiry, as the refresher's reply names them), and Retry-After.
func (a *Agent) rateLimited(x *exchange, key string, t subscriber.Token, err error) {
	wait := defaultRetryAfter
	var refused *subscriber.RefreshError
	if errors.As(err, &refused) && refused.RetryAfter > 0 {
		wait = refused.RetryAfter
	}
	x.header().Set("Retry-After", strconv.Itoa(kv.RetryAfterSeconds(wait)))
	x.outcome = "rate_limited"
	x.writeJSON(http.StatusTooManyRequests, rateLimitedAnswer{
		Error:     apiError{Code: "rate_limited", Message: a.refreshFailure(err)},
		Key:       key,
		Revision:  t.Revision,
		ExpiresAt: t.ExpiresAt.UTC().Format(time.RFC3339),
		ExpiresIn: secondsLeft(t, time.Now()),
	})
}

// apiError is the error of the own API's answers.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// rateLimitedAnswer is a 429's body: the error, and the value the agent
// holds, which a forced refresh may replace after Retry-After.
type rateLimitedAnswer struct {
	Error     apiError `json:"error"`
	Key       string   `json:"key"`
	Revision  uint64   `json:"revision"`
	ExpiresAt string   `json:"expires_at"`
	ExpiresIn int64    `json:"expires_in"`
}

// refusedAsBad reports whether the refresher refused the request itself
// (a stale revision newer than the current one, say).
func refusedAsBad(err error) bool {
	var refused *subscriber.RefreshError
	return errors.As(err, &refused) && refused.Code == kv.CodeBadRequest
}

// askRefresh asks the refresher to replace revision stale of f's key, and
// returns the value held once it has, within RefreshTimeout.
func (a *Agent) askRefresh(ctx context.Context, f *followed, stale uint64, reason string) (subscriber.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RefreshTimeout)
	defer cancel()
	t, err := f.sub.Refresh(ctx, stale)
	a.metrics.refreshed(err)
	if err != nil {
		a.log.Warn("refresh failed", "key", f.key, "stale_revision", stale, "for", reason, "error", err)
	}
	return t, err
}

func (a *Agent) serveJSSDK(x *exchange, key, which string) {
	if app, kind := kv.SplitKey(key); kind != kv.KindToken {
		if kv.ValidateKey(key) == nil { // a ticket's key: the agent picks the ticket itself
			x.fail(http.StatusBadRequest, "bad_request", "/v1/jssdk/ takes the app's key, not a ticket's: use /v1/jssdk/%s/%s", app, which)
			return
		}
		x.fail(http.StatusNotFound, "unknown_key", "/v1/jssdk/{key}/: the key is an appid or a WeCom corpid-agent, not %.80q", key)
		return
	}
	page, err := pageURL(x.r.URL.RawQuery)
	if err != nil {
		x.fail(http.StatusBadRequest, "bad_request", "%v", err)
		return
	}
	ticket := kv.Key(key, kv.KindJSAPITicket)
	if which == "agent-config" {
		ticket = kv.Key(key, kv.KindAgentConfigTicket)
	}
	f := a.lookup(x, ticket)
	if f == nil {
		return
	}
	if _, ok := a.usable(x, f); !ok {
		return
	}
	var config any
	if which == "config" {
		config, err = jssdk.Sign(f.sub, page)
	} else {
		config, err = jssdk.SignAgentConfig(f.sub, page)
	}
	switch {
	case errors.Is(err, subscriber.ErrRemoved):
		x.fail(http.StatusGone, "removed", "%s", removedMessage(err))
	case errors.Is(err, subscriber.ErrExpired), errors.Is(err, subscriber.ErrClosed):
		// It expired, or the agent began to stop, since usable said it
		// could be used.
		x.fail(http.StatusServiceUnavailable, "unavailable", "%s cannot be used right now; ask again", f.key)
	case err != nil: // the one error left is the page URL's
		x.fail(http.StatusBadRequest, "bad_request", "url: %.200q is not a page's absolute http(s) URL, as location.href.split('#')[0] gives it", page)
	default:
		x.writeJSON(http.StatusOK, config)
	}
}

// encodePageURL is what a jssdk request whose page URL came cut or changed
// is told to do.
const encodePageURL = "url-encode the page URL (encodeURIComponent(location.href.split('#')[0]) in the page, urlencode($url) in PHP)"

// pageURL returns the page URL of a jssdk request's query, which takes
// url and nothing else. A page URL with a query of its own that came
// unencoded is cut at its first "&", the rest arriving as parameters of
// their own, and a "+" in it arrives as a space: signed as it came, the
// wx.config would fail in the browser with "invalid signature". So
// another parameter, a second url, or a space (which no page URL has)
// are refused.
func pageURL(rawQuery string) (string, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", fmt.Errorf("the query does not parse: %s", encodePageURL)
	}
	var others []string
	for name := range q {
		if name != "url" {
			others = append(others, fmt.Sprintf("%.40q", name))
		}
	}
	pages := q["url"]
	switch {
	case len(others) > 0:
		slices.Sort(others)
		return "", fmt.Errorf("%s: this path takes url alone, and %s came beside it, the rest of a page URL that was not encoded",
			encodePageURL, strings.Join(others, ", "))
	case len(pages) == 0 || pages[0] == "":
		return "", errors.New("url: the page's URL, as location.href.split('#')[0] gives it, url-encoded")
	case len(pages) > 1:
		return "", fmt.Errorf("%s: url came %d times", encodePageURL, len(pages))
	case strings.Contains(pages[0], " "):
		return "", fmt.Errorf("%s: it has a space, which no page URL has (a \"+\" not encoded arrives as one)", encodePageURL)
	}
	return pages[0], nil
}
