// Package source holds the kinds of credentials the refresher keeps, one
// file each: how each is fetched from WeChat (or WeCom), and whatever else
// differs by kind, as the optional interfaces of package loop: token.go
// (GET /cgi-bin/token), stable.go (stable_token, its forced mode and its
// budget), ticket.go (JS-SDK tickets), wecom.go (WeCom's tokens and
// tickets, its hourly limits, a corp's shared ticket), component.go (a
// third-party platform's token, its verify ticket and push), authorizer.go
// (an authorizer's token and its refresh token). rescue.go resets a spent
// daily quota for the fetches of token.go, stable.go and ticket.go, as
// their FailureHook; platformrescue.go, with a platform's own resets, for
// those of component.go and authorizer.go. A new kind is a new file here: the loop does not
// change.
package source

import (
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// tokenRepeated is what follows a token API answering with the token held
// (only stable_token does, before its renewal stretch): while the held
// record is valid, nothing is written and WeChat is asked again after an
// eighth of the window; once it has expired by the record, the token goes
// in again with the time WeChat says it has left.
func tokenRepeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	if !held.ValidAt(now) {
		return time.Time{}, true
	}
	return now.Add(max(window/8, time.Second)), false
}

// firstAppearanceRepeated is what follows an API answering with the value
// held when it gives the same value for as long as it is valid (tickets,
// WeCom's gettoken): the value's expiry was counted from its first
// appearance and stays. It is asked for again a second after the held
// value expires by that count: the record's expiry is cut to the second,
// and WeChat's is up to that much later. Past that, ask again soon, then
// less and less often.
func firstAppearanceRepeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	if held.ValidAt(now) {
		return held.ExpiresAt.Add(time.Second), false
	}
	return now.Add(min(max(now.Sub(held.ExpiresAt), time.Second), max(window/8, time.Second))), false
}

// firstAppearance is the record of a value counted from its first
// appearance (tickets, WeCom's gettoken), fetched in a: WeChat says the
// whole lifetime in every answer, so the count starts when WeChat may
// have made the value, which is before the call that brought it when an
// earlier call got no answer (it timed out after WeChat made the value).
// Counted from the earliest such call, the expiry is never later than
// WeChat's.
func firstAppearance(a *loop.Attempt, issued upstream.Issued) kv.Credential {
	return kv.NewCredential(a.Key, issued.Value, issued.ExpiresIn, a.IssuedFrom(issued))
}
