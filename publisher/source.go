package publisher

import (
	"context"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// source is how a kind of credential is fetched, and what the refresh loop
// must know of that API. Each kind is in a file of its own.
type source interface {
	// api names the fetch in metrics ("token", "stable_token",
	// "jsapi_ticket", ...) and logs.
	api() string
	// fetch asks WeChat for the credential, in the API's normal mode.
	fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error)
	// window is how long before its expiry a value is replaced, given the
	// configured RefreshBefore: the API may only issue a new value inside
	// some last stretch of the old one's life.
	window(refreshBefore time.Duration) time.Duration
	// checkable reports whether getcallbackip tells whether a value works,
	// as it does for tokens: a forced refresh asks it first.
	checkable() bool
	// repeated decides what follows an answer that repeats the value held:
	// when to ask again, unless the value is to be written (with the
	// expiry the answer gave) after all.
	repeated(held kv.Credential, window time.Duration, now time.Time) (askAgain time.Time, write bool)
	// wecom reports whether it calls WeCom's API (--wecom-base-url)
	// rather than WeChat's.
	wecom() bool
}

// issuedValue is a value as WeChat issued it, with the
// authorizer_refresh_token that came with an authorizer's token, to be
// stored before the token is.
type issuedValue struct {
	upstream.Issued
	Refresh Secret
}

// grant is what a fetch needs: an app's secret for its token, the app's
// current token for what is fetched with it.
type grant struct {
	appid  string // the appid, or a WeCom app's corpid
	secret Secret // an authorizer's: its refresh token
	token  string
	ticket string // a platform's newest component_verify_ticket
	code   string // an authorizer's authorization code, not exchanged yet
}

// sourceOf returns the source of an app's token.
func sourceOf(app App) source {
	switch {
	case app.platform():
		return componentSource{}
	case app.wecom():
		return wecomSource{}
	case app.TokenAPI == TokenAPIStable:
		return stableSource{}
	}
	return classicSource{}
}

// ticketSourceOf returns the source of an app's ticket.
func ticketSourceOf(app App, t Ticket) source {
	if app.wecom() {
		return wecomTicketSource{kind: t}
	}
	return ticketSource{kind: t}
}

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
