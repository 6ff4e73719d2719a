package wechaterr

import (
	"regexp"
	"strings"
)

// The classes of an API call's answer, as failure events name them.
const (
	ClassOK     = "ok"     // errcode 0, or no errcode at all (a file)
	ClassToken  = "token"  // the token was refused: 40001, 40014, 42001
	ClassQuota  = "quota"  // the day's quota of the API is spent: 45009
	ClassConfig = "config" // needs a human: IP whitelist, API not authorised
	ClassRetry  = "retry"  // WeChat is busy, or a per-minute limit
	ClassOther  = "other"  // any other errcode: the call's own error
)

// configCodes are the errcodes of an API call that a person has to act on.
var configCodes = map[int]bool{
	40164: true,                                        // the caller's IP is not on the whitelist
	48001: true,                                        // the app is not authorised for the API
	89503: true, 89501: true, 89506: true, 89507: true, // the IP awaits, or was refused, the administrator's confirmation
	61004: true, // the IP is not on the platform's whitelist
	60020: true, // WeCom: the IP is not among the app's trusted IPs
}

// Class is the class of an answer with errcode to an API call made with a
// token.
func Class(errcode int) string {
	switch {
	case errcode == 0:
		return ClassOK
	case TokenRejected(errcode):
		return ClassToken
	case errcode == 45009:
		return ClassQuota
	case errcode == -1 || errcode == 45011:
		return ClassRetry
	case configCodes[errcode]:
		return ClassConfig
	}
	return ClassOther
}

// RidWorthLooking reports whether an answer with errcode names a request
// the refresher looks up with rid/get: a token refused (40001), a spent
// quota (45009), an IP off the whitelist (40164), an API not authorised
// (48001). rid/get says when, from which IP and how long it took.
func RidWorthLooking(errcode int) bool {
	return errcode == 40001 || errcode == 45009 || errcode == 40164 || errcode == 48001
}

// ridForm is a WeChat request id: groups of hex digits joined by hyphens,
// "61725984-6126f6f9-040f19c4".
var ridForm = regexp.MustCompile(`^[0-9a-f]{1,16}(-[0-9a-f]{1,16}){1,5}$`)

// Rid returns the request id an errmsg ends with, WeChat's
// "... rid: 61725984-6126f6f9-040f19c4", or false if it names none in that
// form: only the last " rid: " counts, and nothing may follow the id.
func Rid(errmsg string) (string, bool) {
	i := strings.LastIndex(errmsg, " rid: ")
	if i < 0 {
		return "", false
	}
	rid := errmsg[i+len(" rid: "):]
	if !ridForm.MatchString(rid) {
		return "", false
	}
	return rid, true
}
