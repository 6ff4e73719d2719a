package source

import (
	"context"
	"net/url"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Token is GET /cgi-bin/token. Every call issues a new token and starts
// the end of the previous one: only the leader calls it, and only when a
// token is due or proven dead.
type Token struct {
	appid  string
	secret upstream.Secret
	client *upstream.Client
	rescue *Rescuer // of a spent quota; nil: none
}

// NewToken returns the source of appid's token, fetched with its secret
// from client's API.
func NewToken(appid string, secret upstream.Secret, client *upstream.Client) *Token {
	return &Token{appid: appid, secret: secret, client: client}
}

func (*Token) API() string { return "token" }

// Fetch asks WeChat for a new token. Every failure is an *upstream.Error
// whose text holds neither the secret nor the URL.
func (s *Token) Fetch(ctx context.Context, _ *loop.Attempt) (upstream.Issued, error) {
	q := url.Values{
		"grant_type": {"client_credential"},
		"appid":      {s.appid},
		"secret":     {s.secret.Reveal()},
	}
	status, body, err := s.client.Get(ctx, "cgi-bin/token", q, s.secret.Reveal())
	if err != nil {
		return upstream.Issued{}, err
	}
	issued, err := upstream.DecodeToken(status, body, upstream.TokenCodes)
	return issued, upstream.ScrubErrMsg(err, s.secret.Reveal())
}

// Window: any time before expiry will do.
func (*Token) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (*Token) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// Check asks WeChat whether the token works.
func (s *Token) Check(ctx context.Context, token string) (bool, error) {
	return s.client.CheckToken(ctx, token)
}

// Ends says that the refresher's own fetch ends the token held: WeChat
// ends every earlier token five minutes after a fetch.
func (t *Token) Ends(api string) bool { return api == t.API() }

var (
	_ loop.Source  = (*Token)(nil)
	_ loop.Checker = (*Token)(nil)
	_ loop.Ender   = (*Token)(nil)
)
