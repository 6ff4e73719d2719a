package publisher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// DefaultUpstreamURL is WeChat's API.
const DefaultUpstreamURL = "https://api.weixin.qq.com"

// MaxUpstreamBody bounds an upstream answer. WeChat's answers are a few
// hundred bytes; anything longer is an error page or worse.
const MaxUpstreamBody = 64 << 10

// MaxExpiresIn is the longest token lifetime accepted from WeChat. It says
// "currently 7200" seconds; a day leaves room without trusting nonsense.
const MaxExpiresIn = 24 * time.Hour

// UpstreamError is a failed token fetch or token check.
type UpstreamError struct {
	ErrCode    int    // WeChat's errcode; 0 when WeChat gave none
	ErrMsg     string // WeChat's errmsg, or what went wrong
	HTTPStatus int    // the HTTP status when it was not 200
	Class      Class
	cause      error
}

func (e *UpstreamError) Error() string {
	var b strings.Builder
	b.WriteString("publisher: upstream: ")
	switch {
	case e.ErrCode != 0:
		_, meaning := classify(e.ErrCode)
		fmt.Fprintf(&b, "errcode %d (%s): %s", e.ErrCode, meaning, e.ErrMsg)
	case e.HTTPStatus != 0:
		fmt.Fprintf(&b, "HTTP %d: %s", e.HTTPStatus, e.ErrMsg)
	default:
		b.WriteString(e.ErrMsg)
	}
	return b.String()
}

// Unwrap returns the transport cause, if any.
func (e *UpstreamError) Unwrap() error { return e.cause }

// Meaning is what the errcode means for an operator.
func (e *UpstreamError) Meaning() string {
	if e.ErrCode == 0 {
		return "no answer from WeChat"
	}
	_, meaning := classify(e.ErrCode)
	return meaning
}

// Fetched is a token as WeChat issued it.
type Fetched struct {
	AccessToken string
	ExpiresIn   time.Duration
}

// Upstream calls WeChat's token and token-check APIs.
type Upstream struct {
	base    *url.URL
	client  *http.Client
	timeout time.Duration
}

// NewUpstream returns a client for the API at baseURL. Each call is bounded
// by timeout. client may be nil; redirects are never followed, so the secret
// in the query can only go to baseURL.
func NewUpstream(baseURL string, client *http.Client, timeout time.Duration) (*Upstream, error) {
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
	return &Upstream{base: base, client: &c, timeout: timeout}, nil
}

// FetchToken asks WeChat for a new token. Every failure is an *UpstreamError
// whose text holds neither the secret nor the URL.
func (u *Upstream) FetchToken(ctx context.Context, appid string, secret Secret) (Fetched, error) {
	q := url.Values{
		"grant_type": {"client_credential"},
		"appid":      {appid},
		"secret":     {secret.Reveal()},
	}
	status, body, err := u.get(ctx, "cgi-bin/token", q, secret.Reveal())
	if err != nil {
		return Fetched{}, err
	}
	f, err := decodeTokenResponse(status, body)
	return f, scrubErrMsg(err, secret.Reveal())
}

// scrubErrMsg removes s from the errmsg of an *UpstreamError: WeChat is not
// known to echo a secret or token back, but a proxy on the way might, and
// the errmsg travels on to logs, failure events and refresh replies.
func scrubErrMsg(err error, s string) error {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		ue.ErrMsg = scrub(ue.ErrMsg, s)
	}
	return err
}

// CheckToken asks WeChat whether token still works, with getcallbackip, the
// cheapest call that needs a token. valid is meaningful only when err is nil.
func (u *Upstream) CheckToken(ctx context.Context, token string) (valid bool, err error) {
	status, body, err := u.get(ctx, "cgi-bin/getcallbackip", url.Values{"access_token": {token}}, token)
	if err != nil {
		return false, err
	}
	valid, err = decodeCheckResponse(status, body)
	return valid, scrubErrMsg(err, token)
}

// get performs one GET and returns the status and at most MaxUpstreamBody+1
// bytes of body. sensitive (a secret or token in the query) is scrubbed from
// every error.
func (u *Upstream) get(ctx context.Context, path string, q url.Values, sensitive string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	target := u.base.JoinPath(path)
	target.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return 0, nil, &UpstreamError{Class: ClassRetry, ErrMsg: "cannot build request"}
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxUpstreamBody+1))
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	return resp.StatusCode, body, nil
}

// transportError turns a client error into an *UpstreamError. Go's
// *url.Error prints the whole URL, secret included, so it is dropped and
// only its cause kept; the cause's text is scrubbed too, in case.
func transportError(err error, sensitive string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := scrub(err.Error(), sensitive)
	cause := err
	if msg != err.Error() {
		cause = nil // the cause itself would print the secret
	}
	return &UpstreamError{Class: ClassRetry, ErrMsg: "request failed: " + msg, cause: cause}
}

// scrub replaces every occurrence of s, plain or URL-encoded, in text.
func scrub(text, s string) string {
	if s == "" {
		return text
	}
	text = strings.ReplaceAll(text, s, redacted)
	return strings.ReplaceAll(text, url.QueryEscape(s), redacted)
}

// tokenAnswer is WeChat's answer to /cgi-bin/token, raw where a wrong type
// must be told apart from a missing field.
type tokenAnswer struct {
	AccessToken *string         `json:"access_token"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	ErrCode     *int            `json:"errcode"`
	ErrMsg      string          `json:"errmsg"`
}

// decodeTokenResponse interprets an answer to /cgi-bin/token.
func decodeTokenResponse(status int, body []byte) (Fetched, error) {
	if err := checkAnswer(status, body); err != nil {
		return Fetched{}, err
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return Fetched{}, &UpstreamError{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	if a.ErrCode != nil && *a.ErrCode != 0 {
		class, _ := classify(*a.ErrCode)
		return Fetched{}, &UpstreamError{ErrCode: *a.ErrCode, ErrMsg: a.ErrMsg, Class: class}
	}
	if a.AccessToken == nil {
		return Fetched{}, &UpstreamError{Class: ClassRetry, ErrMsg: "answer has neither access_token nor errcode"}
	}
	if err := kv.ValidateToken(*a.AccessToken); err != nil {
		return Fetched{}, &UpstreamError{Class: ClassRetry, ErrMsg: "unusable access_token: " + err.Error()}
	}
	secs, err := strconv.ParseInt(string(a.ExpiresIn), 10, 64)
	if err != nil {
		return Fetched{}, &UpstreamError{Class: ClassRetry, ErrMsg: fmt.Sprintf("expires_in %.20q is not a whole number of seconds", a.ExpiresIn)}
	}
	if secs <= 0 || secs > int64(MaxExpiresIn/time.Second) {
		return Fetched{}, &UpstreamError{Class: ClassRetry, ErrMsg: fmt.Sprintf("expires_in %d is outside 1..%d seconds", secs, int64(MaxExpiresIn/time.Second))}
	}
	return Fetched{AccessToken: *a.AccessToken, ExpiresIn: time.Duration(secs) * time.Second}, nil
}

// decodeCheckResponse interprets an answer to /cgi-bin/getcallbackip.
func decodeCheckResponse(status int, body []byte) (bool, error) {
	if err := checkAnswer(status, body); err != nil {
		return false, err
	}
	var a struct {
		IPList  []string `json:"ip_list"`
		ErrCode int      `json:"errcode"`
		ErrMsg  string   `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return false, &UpstreamError{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	switch {
	case kv.TokenRejected(a.ErrCode):
		return false, nil
	case a.ErrCode != 0:
		return false, &UpstreamError{ErrCode: a.ErrCode, ErrMsg: a.ErrMsg, Class: ClassRetry}
	}
	return true, nil
}

// checkAnswer rejects answers that cannot be WeChat's JSON.
func checkAnswer(status int, body []byte) error {
	switch {
	case len(body) > MaxUpstreamBody:
		return &UpstreamError{Class: ClassRetry, ErrMsg: fmt.Sprintf("answer is longer than %d bytes", MaxUpstreamBody), HTTPStatus: nonOK(status)}
	case status != http.StatusOK:
		return &UpstreamError{Class: ClassRetry, HTTPStatus: status, ErrMsg: describeBody(body)}
	}
	return nil
}

func nonOK(status int) int {
	if status == http.StatusOK {
		return 0
	}
	return status
}

// describeBody says what an unexpected body looked like, without quoting it
// at length.
func describeBody(body []byte) string {
	body = bytes.TrimSpace(body)
	switch {
	case len(body) == 0:
		return "empty answer"
	case body[0] == '<':
		return "HTML error page"
	}
	return fmt.Sprintf("unexpected %d-byte answer", len(body))
}

// describeJSONError keeps the kind of a JSON error, not the input it quotes.
func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("invalid JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %s is a JSON %s", typ.Field, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	return "invalid JSON"
}
