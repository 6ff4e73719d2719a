package publisher

// errClass says what an upstream failure means for the refresher.
type errClass string

const (
	// classRetry failures are transient: retried with capped exponential
	// backoff and jitter.
	classRetry errClass = "retry"
	// classConfig failures need a human (wrong secret, IP not whitelisted):
	// retried only after a long pause, logged and announced on the failed
	// subject.
	classConfig errClass = "config"
	// classQuota is the exhausted daily quota: no call until it resets at
	// 00:00 China time.
	classQuota errClass = "quota"
	// classToken is a call made with a token refused the token (40001,
	// 40014, 42001): the token goes through the forced-refresh path.
	classToken errClass = "token"
	// classFrequency is WeCom's frequency limit (45009): per minute and
	// per hour, not per day. The first pause lasts to the next minute,
	// the next ones to the next hour.
	classFrequency errClass = "frequency"
	// classTicket is a third-party platform without a
	// component_verify_ticket that works (none pushed yet, 61005,
	// 61006): the push is restarted, and the component token is fetched
	// when the next ticket arrives.
	classTicket errClass = "ticket"
)

type errcodeInfo struct {
	class   errClass
	meaning string
}

// errcodes are the WeChat answers to the token fetches (/cgi-bin/token and
// /cgi-bin/stable_token) the refresher knows.
// Codes not listed are treated as transient.
var errcodes = map[int]errcodeInfo{
	-1:    {classRetry, "WeChat is busy"},
	45011: {classRetry, "the per-minute call limit is reached"},

	40001: {classConfig, "the AppSecret is wrong, or the app may not fetch tokens"},
	40002: {classConfig, "grant_type is invalid"},
	40013: {classConfig, "the AppID is invalid"},
	40125: {classConfig, "the AppSecret is invalid"},
	40164: {classConfig, "this server's IP address is not on the app's whitelist"},
	40243: {classConfig, "the AppSecret is frozen; unfreeze it on the WeChat platform"},
	41002: {classConfig, "the AppID is missing"},
	41004: {classConfig, "the AppSecret is missing"},
	89501: {classConfig, "this server's IP address awaits the administrator's confirmation"},
	89503: {classConfig, "calls from this IP address need the administrator's confirmation"},
	89506: {classConfig, "this IP address is a risk and awaits the administrator's confirmation"},
	89507: {classConfig, "the administrator refused calls from this IP address for an hour"},
	43002: {classConfig, "the API needs a POST (a bug: report it)"},

	45009: {classQuota, "the daily quota of token fetches is used up"},
}

// classify returns the class and meaning of a token fetch errcode.
func classify(errcode int) (errClass, string) {
	if info, ok := errcodes[errcode]; ok {
		return info.class, info.meaning
	}
	return classRetry, "unknown errcode"
}
