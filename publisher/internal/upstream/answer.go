package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// maxExpiresIn is the longest lifetime accepted from WeChat. It says
// "currently 7200" seconds; a day leaves room without trusting nonsense.
const maxExpiresIn = 24 * time.Hour

// Issued is a value (a token, a ticket) as WeChat issued it.
type Issued struct {
	Value     string
	ExpiresIn time.Duration
	// At is when the call that issued it started, on the refresher's
	// clock: the value's fetched_at.
	At time.Time
}

// tokenAnswer is WeChat's answer to /cgi-bin/token, raw where a wrong type
// must be told apart from a missing field.
type tokenAnswer struct {
	AccessToken *string         `json:"access_token"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	ErrCode     *int            `json:"errcode"`
	ErrMsg      string          `json:"errmsg"`
}

// DecodeToken interprets an answer of the shape of /cgi-bin/token's
// (/cgi-bin/stable_token's, WeCom's gettoken), with the errcodes of the
// API that gave it.
func DecodeToken(status int, body []byte, codes Codes) (Issued, error) {
	if err := checkAnswer(status, body); err != nil {
		return Issued{}, err
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	if a.ErrCode != nil && *a.ErrCode != 0 {
		return Issued{}, codes.errorOf(*a.ErrCode, a.ErrMsg)
	}
	return IssuedFrom("access_token", a.AccessToken, a.ExpiresIn)
}

// IssuedFrom checks the value (the answer's field named field) and
// expires_in of an answer that has no errcode.
func IssuedFrom(field string, value *string, expiresIn json.RawMessage) (Issued, error) {
	if value == nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "answer has neither " + field + " nor errcode"}
	}
	if err := kv.ValidateToken(*value); err != nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "unusable " + field + ": " + err.Error()}
	}
	secs, err := strconv.ParseInt(string(expiresIn), 10, 64)
	if err != nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: fmt.Sprintf("expires_in %.20q is not a whole number of seconds", expiresIn)}
	}
	if secs <= 0 || secs > int64(maxExpiresIn/time.Second) {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: fmt.Sprintf("expires_in %d is outside 1..%d seconds", secs, int64(maxExpiresIn/time.Second))}
	}
	return Issued{Value: *value, ExpiresIn: time.Duration(secs) * time.Second}, nil
}

// DecodeTicket interprets an answer to WeChat's getticket, or to WeCom's
// ticket calls: {"errcode":0,"errmsg":"ok","ticket":"...","expires_in":7200}.
// A token refused is ClassToken; other errcodes are classed by codes.
func DecodeTicket(status int, body []byte, codes Codes) (Issued, error) {
	if err := checkAnswer(status, body); err != nil {
		return Issued{}, err
	}
	var a struct {
		Ticket    *string         `json:"ticket"`
		ExpiresIn json.RawMessage `json:"expires_in"`
		ErrCode   int             `json:"errcode"`
		ErrMsg    string          `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	switch {
	case wechaterr.TokenRejected(a.ErrCode):
		return Issued{}, &Error{ErrCode: a.ErrCode, ErrMsg: a.ErrMsg, Class: ClassToken, Means: "the access_token it was asked with is not valid"}
	case a.ErrCode != 0:
		return Issued{}, codes.errorOf(a.ErrCode, a.ErrMsg)
	case a.Ticket == nil:
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "answer has neither ticket nor errcode"}
	}
	if err := kv.ValidateToken(*a.Ticket); err != nil {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: "unusable ticket: " + err.Error()}
	}
	secs, err := strconv.ParseInt(string(a.ExpiresIn), 10, 64)
	if err != nil || secs <= 0 || secs > int64(maxExpiresIn/time.Second) {
		return Issued{}, &Error{Class: ClassRetry, ErrMsg: fmt.Sprintf("expires_in %.20q is not a number of seconds in 1..%d", a.ExpiresIn, int64(maxExpiresIn/time.Second))}
	}
	return Issued{Value: *a.Ticket, ExpiresIn: time.Duration(secs) * time.Second}, nil
}

// DecodeJSON decodes an answer of the third-party platform's APIs into v,
// or returns its errcode as an *Error classed by codes; a component token
// refused, when codes has no class for the errcode, is ClassToken.
func DecodeJSON(status int, body []byte, codes Codes, v any) error {
	if err := checkAnswer(status, body); err != nil {
		return err
	}
	var e struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	if _, known := codes[e.ErrCode]; known {
		return codes.errorOf(e.ErrCode, e.ErrMsg)
	}
	switch {
	case wechaterr.TokenRejected(e.ErrCode):
		return &Error{ErrCode: e.ErrCode, ErrMsg: e.ErrMsg, Class: ClassToken, Means: "the component_access_token it was asked with is not valid"}
	case e.ErrCode != 0:
		return codes.errorOf(e.ErrCode, e.ErrMsg)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	return nil
}

// decodeCheck interprets an answer to /cgi-bin/getcallbackip.
func decodeCheck(status int, body []byte) (bool, error) {
	if err := checkAnswer(status, body); err != nil {
		return false, err
	}
	var a struct {
		IPList  []string `json:"ip_list"`
		ErrCode int      `json:"errcode"`
		ErrMsg  string   `json:"errmsg"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return false, &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	switch {
	case wechaterr.TokenRejected(a.ErrCode):
		return false, nil
	case a.ErrCode != 0:
		return false, &Error{ErrCode: a.ErrCode, ErrMsg: a.ErrMsg, Class: ClassRetry}
	}
	return true, nil
}

// checkAnswer rejects answers that cannot be WeChat's JSON.
func checkAnswer(status int, body []byte) error {
	switch {
	case len(body) > maxBody:
		return &Error{Class: ClassRetry, ErrMsg: fmt.Sprintf("answer is longer than %d bytes", maxBody), HTTPStatus: nonOK(status)}
	case status != http.StatusOK:
		return &Error{Class: ClassRetry, HTTPStatus: status, ErrMsg: describeBody(body)}
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
