package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
)

// Quota is what WeChat's quota/get says of one API path of an account
// today: its daily limit, the calls counted ("within 1%" of the truth,
// WECHAT.md §8), and, for some paths, a limit per period.
type Quota struct {
	DailyLimit, Used, Remain int64
	// RateLimit is CallCount calls per RefreshSecond seconds; nil when
	// WeChat gives none.
	RateLimit *RateLimit
}

// RateLimit is a limit of calls per period quota/get gives for some paths.
type RateLimit struct{ CallCount, RefreshSecond int64 }

// QuotaCodes are quota/get's own answers. 76021 (a path WeChat does not
// count), 76022 (a path of another kind of account, or /sns/) and 76003
// (not a path) say the path cannot be asked: Unaskable.
var QuotaCodes = Codes{
	-1:    {ClassRetry, "WeChat is busy"},
	40164: {ClassConfig, "this server's IP address is not on the app's whitelist"},
	48001: {ClassConfig, "the app is not authorised for quota/get"},
	45009: {ClassQuota, "the daily quota of quota/get is used up"},
	76021: {ClassConfig, "quota/get does not count this API path"},
	76022: {ClassConfig, "quota/get cannot be asked this API path with this token"},
	76003: {ClassConfig, "the API path is not valid"},
}

// Unaskable reports whether err is quota/get's answer that the path cannot
// be asked about: asking again the same day gets the same.
func Unaskable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.ErrCode {
	case 76021, 76022, 76003:
		return true
	}
	return false
}

// QuotaGet asks WeChat's quota/get about path with token (the account's
// access_token; a platform's component_access_token for its component
// paths). A token refused is ClassToken.
func (u *Client) QuotaGet(ctx context.Context, token, path string) (Quota, error) {
	body, _ := json.Marshal(map[string]string{"cgi_path": path})
	status, answer, err := u.PostJSON(ctx, "cgi-bin/openapi/quota/get", url.Values{"access_token": {token}}, body, token)
	if err != nil {
		return Quota{}, err
	}
	q, err := decodeQuota(status, answer)
	return q, ScrubErrMsg(err, token)
}

// decodeQuota interprets an answer to quota/get:
// {"errcode":0,"quota":{"daily_limit","used","remain"},"rate_limit":{"call_count","refresh_second"}}.
func decodeQuota(status int, body []byte) (Quota, error) {
	if err := checkAnswer(status, body); err != nil {
		return Quota{}, err
	}
	var a struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
		Quota   *struct {
			DailyLimit int64 `json:"daily_limit"`
			Used       int64 `json:"used"`
			Remain     int64 `json:"remain"`
		} `json:"quota"`
		RateLimit *struct {
			CallCount     int64 `json:"call_count"`
			RefreshSecond int64 `json:"refresh_second"`
		} `json:"rate_limit"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Quota{}, &Error{Class: ClassRetry, ErrMsg: "undecodable answer: " + describeJSONError(err)}
	}
	switch {
	case wechaterr.TokenRejected(a.ErrCode):
		return Quota{}, &Error{ErrCode: a.ErrCode, ErrMsg: a.ErrMsg, Class: ClassToken, Means: "the access_token it was asked with is not valid"}
	case a.ErrCode != 0:
		return Quota{}, QuotaCodes.errorOf(a.ErrCode, a.ErrMsg)
	case a.Quota == nil:
		return Quota{}, &Error{Class: ClassRetry, ErrMsg: "answer has neither quota nor errcode"}
	case a.Quota.Used < 0:
		return Quota{}, &Error{Class: ClassRetry, ErrMsg: "answer has a negative used count"}
	}
	q := Quota{DailyLimit: a.Quota.DailyLimit, Used: a.Quota.Used, Remain: max(a.Quota.Remain, 0)}
	if r := a.RateLimit; r != nil && r.CallCount > 0 && r.RefreshSecond > 0 {
		q.RateLimit = &RateLimit{CallCount: r.CallCount, RefreshSecond: r.RefreshSecond}
	}
	return q, nil
}
