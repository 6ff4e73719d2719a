// Package upstream is the refresher's HTTP client of WeChat's (and
// WeCom's) APIs: the calls, each to the base internal/failover says
// (api.weixin.qq.com, or api2.weixin.qq.com when the first fails), what
// their answers mean (Error, with its Class, from the errcode tables), the
// pacing of the calls (Pacer), and the secrets the calls carry (Secret,
// and scrubbing them from every error). It knows nothing of credentials,
// buckets or leadership: the sources say which API fetches what, and the
// refresher's loop decides when.
package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/internal/failover"
)

// maxBody bounds an answer. WeChat's answers are a few hundred bytes;
// anything longer is an error page or worse.
const maxBody = 64 << 10

// Client calls one API: WeChat's, or WeCom's. WeChat's has bases in an
// order (api.weixin.qq.com, then api2.weixin.qq.com); each call goes to
// the one failover.Bases says, and tells it how the base did. A call is
// never sent again on another base: a failed call is its caller's failed
// attempt, retried at the loop's pace, and a fetch that timed out may have
// issued a token the refresher never saw, which a second fetch at once
// elsewhere would only replace again.
type Client struct {
	bases   *failover.Bases
	client  *http.Client
	timeout time.Duration
}

// New returns a client for the API at baseURLs, a comma-separated list
// of bases in order of preference (one URL is a list of one). Each call is
// bounded by timeout. client may be nil; redirects are never followed, so
// a secret in the query can only go to a configured base.
func New(baseURLs string, client *http.Client, timeout time.Duration, opts ...Option) (*Client, error) {
	var fo failover.Config
	for _, o := range opts {
		o(&fo)
	}
	urls, err := failover.Parse(baseURLs)
	if err != nil {
		return nil, fmt.Errorf("publisher: upstream URL: %w", err)
	}
	fo.URLs = urls
	bases, err := failover.New(fo)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	if timeout <= 0 {
		return nil, errors.New("publisher: upstream timeout must be positive")
	}
	c := http.Client{}
	if client != nil {
		c = *client
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{bases: bases, client: &c, timeout: timeout}, nil
}

// Option sets how a client follows its bases.
type Option func(*failover.Config)

// WithFailover names the API in the log lines of the bases' moves, sends
// them to log, and sets how long calls stay on a later base before one
// tries the first again (failover.DefaultRecheck when zero).
func WithFailover(api string, recheck time.Duration, log *slog.Logger) Option {
	return func(c *failover.Config) { c.API, c.Recheck, c.Logger = api, recheck, log }
}

// withClock makes the bases keep time by now, for tests.
func withClock(now func() time.Time) Option {
	return func(c *failover.Config) { c.Now = now }
}

// Bases are the client's bases, for their health.
func (u *Client) Bases() *failover.Bases { return u.bases }

// CheckToken asks WeChat whether token still works, with getcallbackip, the
// cheapest call that needs a token. valid is meaningful only when err is nil.
func (u *Client) CheckToken(ctx context.Context, token string) (valid bool, err error) {
	status, body, err := u.Get(ctx, "cgi-bin/getcallbackip", url.Values{"access_token": {token}}, token)
	if err != nil {
		return false, err
	}
	valid, err = decodeCheck(status, body)
	return valid, ScrubErrMsg(err, token)
}

// Get performs one GET and returns the status and at most maxBody+1 bytes
// of body. sensitive (a secret or token in the query) is scrubbed from
// every error.
func (u *Client) Get(ctx context.Context, path string, q url.Values, sensitive string) (int, []byte, error) {
	return u.Do(ctx, http.MethodGet, path, q, nil, sensitive)
}

// PostJSON performs one POST of the JSON body, as Get does a GET.
func (u *Client) PostJSON(ctx context.Context, path string, q url.Values, body []byte, sensitive string) (int, []byte, error) {
	return u.Do(ctx, http.MethodPost, path, q, body, sensitive)
}

// Do performs one request, as Get and PostJSON do, on the base the
// client's bases say, and tells them how it went.
func (u *Client) Do(ctx context.Context, method, path string, q url.Values, body []byte, sensitive string) (int, []byte, error) {
	call := u.bases.Pick()
	status, answer, err := u.send(ctx, call.URL(), method, path, q, body, sensitive)
	switch {
	case ctx.Err() != nil:
		call.Abandoned() // the caller gave up (shut down, lease lost): nothing learnt of the base
	case err != nil:
		call.Failed(errText(err))
	case failover.Failing(status, errcodeOf(answer)):
		call.Failed(failure(status))
	default:
		call.Succeeded()
	}
	return status, answer, err
}

// send performs one request to base.
func (u *Client) send(ctx context.Context, base *url.URL, method, path string, q url.Values, body []byte, sensitive string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	target := base.JoinPath(path)
	target.RawQuery = q.Encode()
	var content io.Reader
	if body != nil {
		content = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), content)
	if err != nil {
		return 0, nil, &Error{Class: ClassRetry, ErrMsg: "cannot build request"}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	return resp.StatusCode, answer, nil
}

// errcodeOf is the errcode of an answer, 0 when it has none or is not
// WeChat's JSON.
func errcodeOf(answer []byte) int {
	var a struct {
		ErrCode int `json:"errcode"`
	}
	if json.Unmarshal(answer, &a) != nil {
		return 0
	}
	return a.ErrCode
}

// failure says what made an answer count against its base.
func failure(status int) string {
	if status >= 500 {
		return "HTTP " + strconv.Itoa(status)
	}
	return "errcode -1 (WeChat is busy)"
}

// errText is an error's text without the package prefix, for a log line's
// field. The errors of this package hold no secret (see Scrub).
func errText(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return strings.TrimPrefix(e.Error(), "publisher: upstream: ")
	}
	return err.Error()
}

// transportError turns a client error into an *Error. Go's *url.Error
// prints the whole URL, secret included, so it is dropped and only its
// cause kept; the cause's text is scrubbed too, in case.
func transportError(err error, sensitive string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := Scrub(err.Error(), sensitive)
	cause := err
	if msg != err.Error() {
		cause = nil // the cause itself would print the secret
	}
	return &Error{Class: ClassRetry, ErrMsg: "request failed: " + msg, cause: cause, unanswered: true}
}
