package ledger

// Path returns the API path WeChat counts a call under, for the name the
// ledger counts it under (a source's API, the metrics' "api" label), or ""
// for a call that quota/get cannot be asked of (WeCom's: WeCom has no
// quota/get). A forced stable_token is a call to /cgi-bin/stable_token as
// any other; the JS-SDK and card tickets share getticket.
func Path(api string) string { return paths[api] }

var paths = map[string]string{
	"token":              "/cgi-bin/token",
	"stable_token":       "/cgi-bin/stable_token",
	"stable_token_force": "/cgi-bin/stable_token",
	"jsapi_ticket":       "/cgi-bin/ticket/getticket",
	"wx_card_ticket":     "/cgi-bin/ticket/getticket",
	"component_token":    "/cgi-bin/component/api_component_token",
	"authorizer_token":   "/cgi-bin/component/api_authorizer_token",
	"start_push_ticket":  "/cgi-bin/component/api_start_push_ticket",
}

// Calls returns how many of the calls counted by api name in calls (a
// ledger's Calls or MonthCalls) went to path.
func Calls(calls map[string]int, path string) int {
	n := 0
	for api, c := range calls {
		if Path(api) == path {
			n += c
		}
	}
	return n
}
