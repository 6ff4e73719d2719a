package publisher

// Class says what an upstream failure means for the refresher.
type Class string

const (
	// ClassRetry failures are transient: retried with capped exponential
	// backoff and jitter.
	ClassRetry Class = "retry"
	// ClassConfig failures need a human (wrong secret, IP not whitelisted):
	// retried only after a long pause, logged and announced on the failed
	// subject.
	ClassConfig Class = "config"
	// ClassQuota is the exhausted daily quota: no call until it resets at
	// 00:00 China time.
	ClassQuota Class = "quota"
)

type errcodeInfo struct {
	class   Class
	meaning string
}

// errcodes are the WeChat answers to the token fetch the refresher knows.
// Codes not listed are treated as transient.
var errcodes = map[int]errcodeInfo{
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

	45009: {ClassQuota, "the daily quota of token fetches is used up"},
}

// classify returns the class and meaning of a token fetch errcode.
func classify(errcode int) (Class, string) {
	if info, ok := errcodes[errcode]; ok {
		return info.class, info.meaning
	}
	return ClassRetry, "unknown errcode"
}
