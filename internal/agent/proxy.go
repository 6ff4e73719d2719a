package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

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
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		x.wechatError(http.StatusBadRequest, -1, "bad_request", "the query does not parse")
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
	base := a.cfg.WeChatBase
	if _, _, wecom := kv.SplitWeComKey(key); wecom {
		base = a.cfg.WeComBase
	}
	if r.ContentLength > a.cfg.MaxBody {
		x.wechatError(http.StatusRequestEntityTooLarge, -1, "too_large", "the body is over %d bytes", a.cfg.MaxBody)
		return
	}
	body, replayable, err := a.readBody(x)
	if err != nil {
		return
	}
	t, ok := a.wechatUsable(x, f)
	if !ok {
		return
	}
	call := upstreamCall{client: a.upstream, method: r.Method, base: base, path: path, query: query, header: r.Header, timeout: a.cfg.UpstreamTimeout, streamed: r.ContentLength}
	start := time.Now()
	resp, done, err := call.do(r.Context(), t.Value, body)
	if err == nil && replayable {
		var code int
		code, resp, err = wechaterr.Peek(resp)
		if err == nil && wechaterr.TokenRejected(code) {
			fresh, rerr := a.askRefresh(r.Context(), f, t.Revision, "a proxied call got errcode "+strconv.Itoa(code))
			if rerr == nil && fresh.Value != t.Value {
				resp.Body.Close()
				done()
				a.metrics.retried()
				body.(*bytes.Reader).Seek(0, io.SeekStart)
				resp, done, err = call.do(r.Context(), fresh.Value, body)
				t = fresh
			}
		}
	}
	a.metrics.proxied(time.Since(start))
	if err != nil {
		a.upstreamFailed(x, err, t.Value)
		return
	}
	defer done()
	defer resp.Body.Close()
	for k, vv := range resp.Header {
		if !hopHeaders[k] {
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
	for _, key := range append(a.keys.tokenKeys(false), a.keys.tokenKeys(true)...) {
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

// readBody reads a body up to MaxRetryBody into memory, so that the call
// can be sent again; a longer one streams through and is not retried.
// It answers, and returns an error, when the body cannot be had.
func (a *Agent) readBody(x *exchange) (body io.Reader, replayable bool, err error) {
	r := x.r
	limited := http.MaxBytesReader(x.w, r.Body, a.cfg.MaxBody)
	if r.ContentLength > a.cfg.MaxRetryBody {
		return limited, false, nil
	}
	head, err := io.ReadAll(io.LimitReader(limited, a.cfg.MaxRetryBody+1))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		x.wechatError(http.StatusRequestEntityTooLarge, -1, "too_large", "the body is over %d bytes", a.cfg.MaxBody)
		return nil, false, err
	case err != nil:
		x.wechatError(http.StatusRequestTimeout, -1, "bad_request", "the body did not arrive within %s", a.cfg.BodyTimeout)
		return nil, false, err
	case int64(len(head)) > a.cfg.MaxRetryBody: // chunked, and long
		return io.MultiReader(bytes.NewReader(head), limited), false, nil
	}
	return bytes.NewReader(head), true, nil
}

// upstreamFailed answers a call WeChat gave no answer to. The error's
// text never has the URL, which has the token.
func (a *Agent) upstreamFailed(x *exchange, err error, token string) {
	if x.r.Context().Err() != nil {
		x.outcome = "client_gone"
		return
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := strings.ReplaceAll(err.Error(), token, "[token]")
	a.log.Warn("WeChat call failed", "path", x.r.URL.Path, "error", msg)
	if errors.Is(err, context.DeadlineExceeded) {
		x.wechatError(http.StatusGatewayTimeout, -1, "upstream_timeout", "system busy: WeChat did not answer within %s", a.cfg.UpstreamTimeout)
		return
	}
	x.wechatError(http.StatusBadGateway, -1, "upstream_error", "system busy: no answer from WeChat: %s", msg)
}

// upstreamCall is one API call, sent with a token.
type upstreamCall struct {
	client   *http.Client
	method   string
	base     *url.URL
	path     string
	query    url.Values
	header   http.Header
	timeout  time.Duration
	streamed int64 // the length of a body not buffered, as the client gave it
}

// do sends the call with token and body. done ends the call's context once
// its answer has been read.
func (c upstreamCall) do(ctx context.Context, token string, body io.Reader) (*http.Response, context.CancelFunc, error) {
	u := *c.base
	u.Path = strings.TrimSuffix(c.base.Path, "/") + c.path
	u.RawPath = ""
	q := make(url.Values, len(c.query))
	for k, v := range c.query {
		q[k] = v
	}
	q.Set("access_token", token)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	req, err := http.NewRequestWithContext(ctx, c.method, u.String(), body)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("building the request: %w", err)
	}
	for _, h := range forwardedHeaders {
		if v := c.header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "wxtoken-agent")
	}
	if _, buffered := body.(*bytes.Reader); !buffered {
		req.ContentLength = c.streamed // -1, unknown: sent chunked
	}
	resp, err := c.client.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}
