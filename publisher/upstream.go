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

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// DefaultUpstreamURL is WeChat's API.
const DefaultUpstreamURL = "https://api.weixin.qq.com"

// maxUpstreamBody bounds an upstream answer. WeChat's answers are a few
// hundred bytes; anything longer is an error page or worse.
const maxUpstreamBody = 64 << 10

// maxExpiresIn is the longest token lifetime accepted from WeChat. It says
// "currently 7200" seconds; a day leaves room without trusting nonsense.
const maxExpiresIn = 24 * time.Hour

// upstreamError is a failed token fetch or token check.
type upstreamError struct {
	ErrCode    int    // WeChat's errcode; 0 when WeChat gave none
	ErrMsg     string // WeChat's errmsg, or what went wrong
	HTTPStatus int    // the HTTP status when it was not 200
	class      errClass
	// means is what ErrCode means from the API that answered it; the
	// token fetch's meaning (classify) when empty.
	means string
	cause error
}

func (e *upstreamError) Error() string {
	var b strings.Builder
	b.WriteString("publisher: upstream: ")
	switch {
	case e.ErrCode != 0:
		fmt.Fprintf(&b, "errcode %d (%s): %s", e.ErrCode, e.meaning(), e.ErrMsg)
	case e.HTTPStatus != 0:
		fmt.Fprintf(&b, "HTTP %d: %s", e.HTTPStatus, e.ErrMsg)
	default:
		b.WriteString(e.ErrMsg)
	}
	return b.String()
}

// Unwrap returns the transport cause, if any.
func (e *upstreamError) Unwrap() error { return e.cause }

// Meaning is what the errcode means for an operator.
func (e *upstreamError) meaning() string {
	switch {
	case e.means != "":
		return e.means
	case e.ErrCode == 0:
		return "no answer from WeChat"
	}
	_, meaning := classify(e.ErrCode)
	return meaning
}

// issuedValue is a token or ticket as WeChat issued it.
type issuedValue struct {
	Value     string
	ExpiresIn time.Duration
	// At is when the call that issued it started, on the refresher's
	// clock: the value's fetched_at.
	At time.Time
	// Refresh is the authorizer_refresh_token that came with an
	// authorizer's token, to be stored before the token is.
	Refresh Secret
}

// upstreamClient calls WeChat's token and token-check APIs.
type upstreamClient struct {
	base    *url.URL
	client  *http.Client
	timeout time.Duration
}

// newUpstreamClient returns a client for the API at baseURL. Each call is bounded
// by timeout. client may be nil; redirects are never followed, so the secret
// in the query can only go to baseURL.
func newUpstreamClient(baseURL string, client *http.Client, timeout time.Duration) (*upstreamClient, error) {
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
	return &upstreamClient{base: base, client: &c, timeout: timeout}, nil
}

// scrubErrMsg removes s from the errmsg of an *upstreamError: WeChat is not
// known to echo a secret or token back, but a proxy on the way might, and
// the errmsg travels on to logs, failure events and refresh replies.
func scrubErrMsg(err error, s string) error {
	var ue *upstreamError
	if errors.As(err, &ue) {
		ue.ErrMsg = scrub(ue.ErrMsg, s)
	}
	return err
}

// checkToken asks WeChat whether token still works, with getcallbackip, the
// cheapest call that needs a token. valid is meaningful only when err is nil.
func (u *upstreamClient) checkToken(ctx context.Context, token string) (valid bool, err error) {
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
func (u *upstreamClient) get(ctx context.Context, path string, q url.Values, sensitive string) (int, []byte, error) {
	return u.do(ctx, http.MethodGet, path, q, nil, sensitive)
}

// postJSON performs one POST of the JSON body, as get does a GET.
func (u *upstreamClient) postJSON(ctx context.Context, path string, body []byte, sensitive string) (int, []byte, error) {
	return u.do(ctx, http.MethodPost, path, nil, body, sensitive)
}

func (u *upstreamClient) do(ctx context.Context, method, path string, q url.Values, body []byte, sensitive string) (int, []byte, error) {
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
		return 0, nil, &upstreamError{class: classRetry, ErrMsg: "cannot build request"}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
	if err != nil {
		return 0, nil, transportError(err, sensitive)
	}
	return resp.StatusCode, answer, nil
}

// transportError turns a client error into an *upstreamError. Go's
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
	return &upstreamError{class: classRetry, ErrMsg: "request failed: " + msg, cause: cause}
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

// decodeTokenResponse interprets an answer to /cgi-bin/token or
// /cgi-bin/stable_token.
func decodeTokenResponse(status int, body []byte) (issuedValue, error) {
	return decodeTokenAnswer(status, body, classify)
}

// decodeTokenAnswer interprets an answer of the shape of /cgi-bin/token's,
// with the errcodes of the API that gave it.
func decodeTokenAnswer(status int, body []byte, classify func(int) (errClass, string)) (issuedValue, error) {
	if err := checkAnswer(status, body); err != nil {
		return issuedValue{}, err
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	if a.ErrCode != nil && *a.ErrCode != 0 {
		class, meaning := classify(*a.ErrCode)
		return issuedValue{}, &upstreamError{ErrCode: *a.ErrCode, ErrMsg: a.ErrMsg, class: class, means: meaning}
	}
	return issuedFrom("access_token", a.AccessToken, a.ExpiresIn)
}

// issuedFrom checks the token (named field in the answer) and expires_in of
// an answer that has no errcode.
func issuedFrom(field string, token *string, expiresIn json.RawMessage) (issuedValue, error) {
	if token == nil {
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: "answer has neither " + field + " nor errcode"}
	}
	if err := kv.ValidateToken(*token); err != nil {
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: "unusable " + field + ": " + err.Error()}
	}
	secs, err := strconv.ParseInt(string(expiresIn), 10, 64)
	if err != nil {
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: fmt.Sprintf("expires_in %.20q is not a whole number of seconds", expiresIn)}
	}
	if secs <= 0 || secs > int64(maxExpiresIn/time.Second) {
		return issuedValue{}, &upstreamError{class: classRetry, ErrMsg: fmt.Sprintf("expires_in %d is outside 1..%d seconds", secs, int64(maxExpiresIn/time.Second))}
	}
	return issuedValue{Value: *token, ExpiresIn: time.Duration(secs) * time.Second}, nil
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
		return false, &upstreamError{class: classRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	switch {
	case wechaterr.TokenRejected(a.ErrCode):
		return false, nil
	case a.ErrCode != 0:
		return false, &upstreamError{ErrCode: a.ErrCode, ErrMsg: a.ErrMsg, class: classRetry}
	}
	return true, nil
}

// checkAnswer rejects answers that cannot be WeChat's JSON.
func checkAnswer(status int, body []byte) error {
	switch {
	case len(body) > maxUpstreamBody:
		return &upstreamError{class: classRetry, ErrMsg: fmt.Sprintf("answer is longer than %d bytes", maxUpstreamBody), HTTPStatus: nonOK(status)}
	case status != http.StatusOK:
		return &upstreamError{class: classRetry, HTTPStatus: status, ErrMsg: describeBody(body)}
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
