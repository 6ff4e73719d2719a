package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/internal/failover"
	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// newUpstreamClient returns the client WeChat calls go out on. It follows
// no redirect: a call, and the token in it, goes to the configured base
// and nowhere else.
func newUpstreamClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64 // every call goes to one or two hosts
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// forwardedHeaders are the request headers passed on to WeChat; the
// others (Authorization and Cookie above all) stay here.
var forwardedHeaders = []string{"Content-Type", "Accept", "Accept-Language", "User-Agent"}

// hopHeaders are a connection's, not the answer's: not passed back.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// proxy forwards an API call to WeChat with the current token of its app
// put in, and retries it once with a new token when WeChat rejects the one
// used. The app is prefixKey's, else the one whose token the call names,
// else the only one the caller may use.
func (a *Agent) proxy(x *exchange, prefixKey, path string) {
	r := x.r
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		x.header().Set("Allow", "GET, POST")
		x.wechatError(http.StatusMethodNotAllowed, -1, "bad_request", "WeChat's APIs are called with GET or POST, not %.16s", r.Method)
		return
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		x.wechatError(http.StatusBadRequest, -1, "bad_request", "the query does not parse")
		return
	}
	if x.secret != "" {
		x.refuseSecret(forwardsNoSecret)
		return
	}
	key := prefixKey
	if key == "" {
		if key = a.callerOf(x, query.Get("access_token")); key == "" {
			return
		}
	}
	f := a.wechatFind(x, key)
	if f == nil {
		return
	}
	bases := a.wechat
	if _, _, wecom := kv.SplitWeComKey(key); wecom {
		bases = a.wecom
	}
	if r.ContentLength > a.cfg.MaxBody {
		x.wechatError(http.StatusRequestEntityTooLarge, -1, "too_large", "the body is over %d bytes", a.cfg.MaxBody)
		return
	}
	body, err := a.readBody(x)
	if err != nil {
		return
	}
	if x.carried(bodySecret(r.Header.Get("Content-Type"), body.data), "body"); x.secret != "" {
		x.refuseSecret(forwardsNoSecret)
		return
	}
	a.bound(x, a.longestCall())
	t, ok := a.wechatUsable(x, f)
	if !ok {
		return
	}
	// The call and its retry with a new token go to one base: the retry
	// is about the token, not the base.
	target := bases.Pick()
	call := upstreamCall{client: a.upstream, method: r.Method, base: target.URL(), path: path, query: query, header: r.Header, timeout: a.cfg.UpstreamTimeout}
	start := time.Now()
	resp, done, answer, err := a.send(r.Context(), call, t.Value, body, key)
	if body.buffered && err == nil && wechaterr.TokenRejected(answer.ErrCode) {
		fresh, rerr := a.askRefresh(r.Context(), f, t.Revision, "a proxied call got errcode "+strconv.Itoa(answer.ErrCode))
		if rerr == nil && fresh.Value != t.Value {
			resp.Body.Close()
			done()
			a.metrics.retried()
			resp, done, answer, err = a.send(r.Context(), call, fresh.Value, body, key)
			t = fresh
		}
	}
	a.metrics.proxied(time.Since(start))
	report(r.Context(), target, resp, answer.ErrCode, err, t.Value)
	if err != nil {
		a.upstreamFailed(x, err, t.Value)
		return
	}
	bodyRead(x) // a streamed body has gone to WeChat by now
	defer done()
	passBack(x, resp)
}

// send makes one call of key's with token, and counts it (usage.go). The
// answer's errcode and errmsg are read when it is a short JSON answer
// (wechaterr.PeekAnswer); any other body, a file above all, is left to
// stream back untouched. done is nil when err is not.
func (a *Agent) send(ctx context.Context, call upstreamCall, token string, body requestBody, key string) (*http.Response, context.CancelFunc, wechaterr.Answer, error) {
	start := time.Now()
	resp, done, err := call.do(ctx, token, body)
	var answer wechaterr.Answer
	if err == nil {
		if answer, resp, err = wechaterr.PeekAnswer(resp); err != nil {
			done()
			done = nil
		}
	}
	a.counted(key, call.path, resp, answer, err, time.Since(start))
	return resp, done, answer, err
}

// forwardsNoSecret is why a forwarded call with a secret is refused.
const forwardsNoSecret = "the agent forwards no secret to WeChat; a call that needs the AppSecret is wxtoken serve's to make " +
	"(clear the quota with /cgi-bin/clear_quota, which takes the token the agent puts in)"

// passBack answers WeChat's answer as it came, but for the connection's
// own headers, and closes its body.
func passBack(x *exchange, resp *http.Response) {
	defer resp.Body.Close()
	connection := resp.Header.Values("Connection")
	for k, vv := range resp.Header {
		if !hopHeaders[k] && !slices.ContainsFunc(connection, func(c string) bool { return strings.EqualFold(strings.TrimSpace(c), k) }) {
			x.header()[k] = vv
		}
	}
	if resp.StatusCode != http.StatusOK {
		x.outcome = "wechat_status"
	}
	x.writeHeader(resp.StatusCode)
	io.Copy(x.w, resp.Body)
}

// callerOf returns the app of a proxied call with no /app/ prefix: the one
// whose token, current or recent, it names, or the only one the caller may
// use. It answers, and returns "", when there is none.
func (a *Agent) callerOf(x *exchange, token string) string {
	if key, ok := a.keys.ofToken(token); ok && x.caller.may(key) {
		return key
	}
	if token != "" {
		x.wechatError(http.StatusOK, 40014, "unknown_key",
			"invalid access_token: not one this agent holds; take the token from the agent, or name the app with the base URL /app/KEY/")
		return ""
	}
	var mine []string
	for _, key := range append(a.keys.tokenKeys(false), a.keys.tokenKeys(true)...) { // held or not yet
		if x.caller.may(key) {
			mine = append(mine, key)
		}
	}
	if len(mine) == 1 {
		return mine[0]
	}
	x.wechatError(http.StatusOK, 41001, "bad_request", "access_token missing: this agent serves several apps; name one with the base URL /app/KEY/")
	return ""
}

// requestBody is a call's body: kept in memory, so that the call can be
// sent again, or streamed through from the client once.
type requestBody struct {
	buffered bool
	data     []byte    // when buffered
	stream   io.Reader // when not
	length   int64     // the client's Content-Length of a streamed body; -1 unknown
}

// readBody reads a body up to MaxRetryBody into memory; a longer one
// streams through and is not retried. It answers, and returns an error,
// when the body cannot be had.
func (a *Agent) readBody(x *exchange) (requestBody, error) {
	r := x.r
	limited := http.MaxBytesReader(x.w, r.Body, a.cfg.MaxBody)
	if r.ContentLength > a.cfg.MaxRetryBody {
		return requestBody{stream: limited, length: r.ContentLength}, nil
	}
	head, err := io.ReadAll(io.LimitReader(limited, a.cfg.MaxRetryBody+1))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		x.wechatError(http.StatusRequestEntityTooLarge, -1, "too_large", "the body is over %d bytes", a.cfg.MaxBody)
		return requestBody{}, err
	case err != nil && r.Context().Err() != nil:
		x.outcome = "client_gone"
		return requestBody{}, err
	case err != nil:
		x.wechatError(http.StatusRequestTimeout, -1, "bad_request", "the body did not arrive within %s", a.cfg.BodyTimeout)
		return requestBody{}, err
	case int64(len(head)) > a.cfg.MaxRetryBody: // chunked, and long
		return requestBody{stream: io.MultiReader(bytes.NewReader(head), limited), length: -1}, nil
	}
	bodyRead(x)
	return requestBody{buffered: true, data: head}, nil
}

// report tells the bases how the call's base did: no answer, HTTP 5xx or
// errcode -1 count against it (the errcode is known only of a body read
// to find it), anything else is the base working. A call its client gave
// up, or whose body was too large, says nothing of the base.
func report(ctx context.Context, target failover.Call, resp *http.Response, errcode int, err error, token string) {
	var tooLarge *http.MaxBytesError
	switch {
	case ctx.Err() != nil || errors.As(err, &tooLarge):
		target.Abandoned()
	case err != nil:
		target.Failed(noURL(err, token))
	case resp.StatusCode >= 500:
		target.Failed("HTTP " + strconv.Itoa(resp.StatusCode))
	case failover.Failing(resp.StatusCode, errcode):
		target.Failed("errcode -1 (WeChat is busy)")
	default:
		target.Succeeded()
	}
}

// noURL is an error's text without the URL Go's client puts in it, which
// has the token, and without the token.
func noURL(err error, token string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return strings.ReplaceAll(err.Error(), token, "[token]")
}

// upstreamFailed answers a call WeChat gave no answer to. The error's
// text never has the URL, which has the token.
func (a *Agent) upstreamFailed(x *exchange, err error, token string) {
	msg := noURL(err, token)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		x.wechatError(http.StatusRequestEntityTooLarge, -1, "too_large", "the body is over %d bytes", a.cfg.MaxBody)
		return
	case x.r.Context().Err() != nil:
		x.outcome = "client_gone" // the answer below goes nowhere, most likely
	default:
		a.log.Warn("WeChat call failed", "path", x.r.URL.Path, "error", msg)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		x.wechatError(http.StatusGatewayTimeout, -1, "upstream_timeout", "system busy: WeChat did not answer within %s", a.cfg.UpstreamTimeout)
		return
	}
	x.wechatError(http.StatusBadGateway, -1, "upstream_error", "system busy: no answer from WeChat: %s", msg)
}

// upstreamCall is one API call, sent with a token.
type upstreamCall struct {
	client  *http.Client
	method  string
	base    *url.URL
	path    string
	query   url.Values
	header  http.Header
	timeout time.Duration
}

// do sends the call with token and body. done ends the call's context once
// its answer has been read.
func (c upstreamCall) do(ctx context.Context, token string, body requestBody) (*http.Response, context.CancelFunc, error) {
	u := *c.base
	u.Path = strings.TrimSuffix(c.base.Path, "/") + c.path
	u.RawPath = ""
	q := make(url.Values, len(c.query))
	for k, v := range c.query {
		q[k] = v
	}
	q.Set("access_token", token)
	u.RawQuery = q.Encode()
	// A new reader for each attempt: the transport may still be reading
	// the last one's when its answer is in.
	var reader io.Reader = bytes.NewReader(body.data)
	if !body.buffered {
		reader = body.stream
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	req, err := http.NewRequestWithContext(ctx, c.method, u.String(), reader)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("building the request: %w", err)
	}
	if !body.buffered {
		req.ContentLength = body.length // -1: sent chunked
	}
	for _, h := range forwardedHeaders {
		if v := c.header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "wxtoken-agent")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}
