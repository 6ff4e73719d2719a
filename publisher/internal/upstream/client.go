// Package upstream is the refresher's HTTP client of WeChat's (and
// WeCom's) APIs: the calls, what their answers mean (Error, with its
// Class, from the errcode tables), the pacing of the calls (Pacer), and
// the secrets the calls carry (Secret, and scrubbing them from every
// error). It knows nothing of credentials, buckets or leadership: the
// sources say which API fetches what, and the refresher's loop decides
// when.
package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// maxBody bounds an answer. WeChat's answers are a few hundred bytes;
// anything longer is an error page or worse.
const maxBody = 64 << 10

// Client calls one API: WeChat's, or WeCom's.
type Client struct {
	base    *url.URL
	client  *http.Client
	timeout time.Duration
}

// New returns a client for the API at baseURL. Each call is bounded by
// timeout. client may be nil; redirects are never followed, so a secret in
// the query can only go to baseURL.
func New(baseURL string, client *http.Client, timeout time.Duration) (*Client, error) {
	base, err := url.Parse(baseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("publisher: upstream URL %q is not an http(s) URL", baseURL)
	}
	if timeout <= 0 {
		return nil, errors.New("publisher: upstream timeout must be positive")
	}
	c := http.Client{}
	if client != nil {
		c = *client
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{base: base, client: &c, timeout: timeout}, nil
}

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

// Do performs one request, as Get and PostJSON do.
func (u *Client) Do(ctx context.Context, method, path string, q url.Values, body []byte, sensitive string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	target := u.base.JoinPath(path)
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
	return &Error{Class: ClassRetry, ErrMsg: "request failed: " + msg, cause: cause}
}
