package upstream

import (
	"context"
	"encoding/json"
	"net/url"
)

// WeChat's answers to a reset of a spent quota (WECHAT.md §8) that the
// rescue tells apart.
const (
	// CodeResetsSpent (48006): the month's resets of this kind are spent,
	// by wxtoken or elsewhere (the console shares the account's 10).
	CodeResetsSpent = 48006
	// CodeUnverified (48001, "api unauthorized"): the account may not
	// reset its quota; only verified (认证) accounts can.
	CodeUnverified = 48001
	// CodeNotClearable and CodePathNotClearable (76021, 76022): quota/clear
	// does not take this API path.
	CodeNotClearable     = 76021
	CodePathNotClearable = 76022
)

// ClearCodes are the answers of quota/clear, clear_quota and
// clear_quota/v2, and of a platform's component forms of the last two; a token refused is ClassToken (DecodeJSON).
var ClearCodes = Codes{
	-1:                   {ClassRetry, "WeChat is busy"},
	CodeResetsSpent:      {ClassQuota, "this month's quota resets are spent (the console's count too)"},
	CodeUnverified:       {ClassConfig, "the account may not reset its quota: only verified (认证) accounts can"},
	CodeNotClearable:     {ClassConfig, "this API path's quota cannot be reset on its own"},
	CodePathNotClearable: {ClassConfig, "this API path's quota cannot be reset on its own"},
	40013:                {ClassConfig, "the AppID is invalid, or not the token's account"},
	41002:                {ClassConfig, "the appid is missing"},
	41004:                {ClassConfig, "the appsecret is missing"},
	40125:                {ClassConfig, "the AppSecret is wrong"},
	40164:                {ClassConfig, "this server's IP address is not on the app's whitelist"},
	61011:                {ClassConfig, "the component appid is not a platform's"},
}

// ClearPath resets the day's count of one API path of the token's account:
// POST /cgi-bin/openapi/quota/clear {"cgi_path"}, from its own monthly
// budget.
func (u *Client) ClearPath(ctx context.Context, token, path string) error {
	body, _ := json.Marshal(map[string]string{"cgi_path": path})
	return u.clear(ctx, "cgi-bin/openapi/quota/clear", url.Values{"access_token": {token}}, body, token)
}

// ClearQuota resets the day's counts of every API of appid with a token
// of the account (or of a platform it authorized): POST /cgi-bin/clear_quota
// {"appid"}, from the account's 10 a month, shared with the console.
func (u *Client) ClearQuota(ctx context.Context, token, appid string) error {
	body, _ := json.Marshal(map[string]string{"appid": appid})
	return u.clear(ctx, "cgi-bin/clear_quota", url.Values{"access_token": {token}}, body, token)
}

// ClearQuotaBySecret resets them as ClearQuota does, with the AppSecret
// and no token: POST /cgi-bin/clear_quota/v2 {"appid", "appsecret"}, from
// the same 10 a month.
func (u *Client) ClearQuotaBySecret(ctx context.Context, appid string, secret Secret) error {
	body, _ := json.Marshal(map[string]string{"appid": appid, "appsecret": secret.Reveal()})
	return u.clear(ctx, "cgi-bin/clear_quota/v2", nil, body, secret.Reveal())
}

// ClearComponentQuota resets the day's counts of every API of platform
// componentAppID with its component token: POST
// /cgi-bin/component/clear_quota {"component_appid"}, from the platform
// account's 10 a month.
func (u *Client) ClearComponentQuota(ctx context.Context, token, componentAppID string) error {
	body, _ := json.Marshal(map[string]string{"component_appid": componentAppID})
	return u.clear(ctx, "cgi-bin/component/clear_quota", url.Values{"component_access_token": {token}}, body, token)
}

// ClearComponentQuotaBySecret resets them as ClearComponentQuota does,
// with the platform's secret and no token: POST
// /cgi-bin/component/clear_quota/v2 {"component_appid", "appsecret"}.
func (u *Client) ClearComponentQuotaBySecret(ctx context.Context, componentAppID string, secret Secret) error {
	body, _ := json.Marshal(map[string]string{"component_appid": componentAppID, "appsecret": secret.Reveal()})
	return u.clear(ctx, "cgi-bin/component/clear_quota/v2", nil, body, secret.Reveal())
}

// clear makes one reset and returns WeChat's refusal, if any, as an
// *Error whose text holds no token nor secret.
func (u *Client) clear(ctx context.Context, path string, q url.Values, body []byte, sensitive string) error {
	status, answer, err := u.PostJSON(ctx, path, q, body, sensitive)
	if err != nil {
		return err
	}
	var ok struct{}
	return ScrubErrMsg(DecodeJSON(status, answer, ClearCodes, &ok), sensitive)
}
