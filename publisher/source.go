package publisher

import (
	"context"
	"time"
)

// source is how an app's token is fetched, and what the refresh loop must
// know of that API. Each kind is in a file of its own.
type source interface {
	// api names the fetch in metrics ("token", "stable_token") and logs.
	api() string
	// fetch asks WeChat for the app's token in the API's normal mode.
	fetch(ctx context.Context, u *upstreamClient, appid string, secret Secret) (issuedToken, error)
	// window is how long before its expiry a token is replaced, given
	// the configured RefreshBefore: the API may only issue a new token
	// inside some last stretch of the old one's life.
	window(refreshBefore time.Duration) time.Duration
}

// sourceFor returns the source of an API.
func sourceFor(api TokenAPI) source {
	if api == TokenAPIStable {
		return stableSource{}
	}
	return classicSource{}
}
