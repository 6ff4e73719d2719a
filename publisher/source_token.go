package publisher

import (
	"context"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// classicSource is GET /cgi-bin/token. Every call issues a new token and
// starts the end of the previous one: only the leader calls it, and only
// when a token is due or proven dead.
type classicSource struct{}

func (classicSource) api() string { return "token" }

// fetch asks WeChat for a new token. Every failure is an *upstream.Error
// whose text holds neither the secret nor the URL.
func (classicSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	q := url.Values{
		"grant_type": {"client_credential"},
		"appid":      {g.appid},
		"secret":     {g.secret.Reveal()},
	}
	status, body, err := u.Get(ctx, "cgi-bin/token", q, g.secret.Reveal())
	if err != nil {
		return issuedValue{}, err
	}
	f, err := upstream.DecodeToken(status, body, upstream.TokenCodes)
	return issuedValue{Issued: f}, upstream.ScrubErrMsg(err, g.secret.Reveal())
}

// window: any time before expiry will do.
func (classicSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (classicSource) checkable() bool { return true }

func (classicSource) wecom() bool { return false }

func (classicSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}
