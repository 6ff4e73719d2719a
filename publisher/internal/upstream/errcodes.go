package upstream

// Code is what an errcode of one API means.
type Code struct {
	Class   Class
	Meaning string
}

// Codes are the errcodes of one API the refresher knows; any other is
// transient (ClassRetry, "unknown errcode").
type Codes map[int]Code

// errorOf is the *Error of an answer with errcode code.
func (c Codes) errorOf(code int, msg string) *Error {
	info, ok := c[code]
	if !ok {
		info = Code{ClassRetry, "unknown errcode"}
	}
	return &Error{ErrCode: code, ErrMsg: msg, Class: info.Class, Means: info.Meaning}
}

// TokenCodes are the answers of the token fetches, /cgi-bin/token and
// /cgi-bin/stable_token.
var TokenCodes = Codes{
	-1:    {ClassRetry, "WeChat is busy"},
	45011: {ClassRetry, "the per-minute call limit is reached"},

	40001: {ClassConfig, "the AppSecret is wrong, or the app may not fetch tokens"},
	40002: {ClassConfig, "grant_type is invalid"},
	40013: {ClassConfig, "the AppID is invalid"},
	40125: {ClassConfig, "the AppSecret is invalid"},
	40164: {ClassConfig, "this server's IP address is not on the app's whitelist"},
	40243: {ClassConfig, "the AppSecret is frozen; unfreeze it on the WeChat platform"},
	41002: {ClassConfig, "the AppID is missing"},
	41004: {ClassConfig, "the AppSecret is missing"},
	89501: {ClassConfig, "this server's IP address awaits the administrator's confirmation"},
	89503: {ClassConfig, "calls from this IP address need the administrator's confirmation"},
	89506: {ClassConfig, "this IP address is a risk and awaits the administrator's confirmation"},
	89507: {ClassConfig, "the administrator refused calls from this IP address for an hour"},
	43002: {ClassConfig, "the API needs a POST (a bug: report it)"},

	45009: {ClassQuota, "the daily quota of token fetches is used up"},
}

// TicketCodes are the answers of /cgi-bin/ticket/getticket; a token
// refused is ClassToken (DecodeTicket).
var TicketCodes = Codes{
	-1:    {ClassRetry, "WeChat is busy"},
	45009: {ClassQuota, "the daily quota of ticket fetches is used up"},
	40164: {ClassConfig, "this server's IP address is not on the app's whitelist"},
	48001: {ClassConfig, "the app is not authorised for this API"},
}

// WeComCodes are the answers of WeCom's gettoken and ticket calls.
var WeComCodes = Codes{
	-1:    {ClassRetry, "WeCom is busy"},
	40001: {ClassConfig, "the app secret (corpsecret) is wrong"},
	40013: {ClassConfig, "the corpid is invalid"},
	60020: {ClassConfig, "this server's IP address is not among the app's trusted IPs"},
	45009: {ClassFrequency, "WeCom's call frequency limit is reached"},
}

// ComponentCodes are the answers of api_component_token and
// api_start_push_ticket.
var ComponentCodes = Codes{
	-1:    {ClassRetry, "WeChat is busy"},
	61005: {ClassTicket, "the component_verify_ticket is expired"},
	61006: {ClassTicket, "the component_verify_ticket is invalid"},
	61004: {ClassConfig, "this server's IP address is not on the platform's whitelist"},
	61011: {ClassConfig, "the component appid is invalid"},
	40125: {ClassConfig, "the component appsecret is invalid"},
	41004: {ClassConfig, "the component appsecret is missing"},
	40001: {ClassConfig, "the component appsecret is wrong"},
	45009: {ClassQuota, "the daily quota of component token fetches is used up"},
}

// CodeSpent is api_query_auth's answer to an authorization code used or
// expired.
const CodeSpent = 61010

// AuthorizerCodes are the answers of api_authorizer_token and
// api_query_auth; a component token refused is ClassToken (DecodeJSON).
var AuthorizerCodes = Codes{
	-1:        {ClassRetry, "WeChat is busy"},
	61023:     {ClassConfig, "the refresh token is invalid: the account must authorize the platform again"},
	CodeSpent: {ClassConfig, "the authorization code is expired or used: the account must authorize the platform again"},
	61003:     {ClassConfig, "the account has not authorized the platform"},
	61011:     {ClassConfig, "the component appid is invalid"},
	45009:     {ClassQuota, "the daily quota of authorizer token fetches is used up"},
}
