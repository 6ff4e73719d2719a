package source

import (
	"context"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/ledger"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A third-party platform's spent quota, rescued as an account's is
// (rescue.go), with the platform's own resets (WECHAT.md §5, §8):
// quota/clear for the one path with the component token (WeChat answers
// quota/get and quota/clear about a component path to a component token),
// component/clear_quota with the still-valid component token, and
// component/clear_quota/v2 with the platform's secret (no token needed).
//
// An authorizer's token is fetched with the platform's component token,
// and WeChat counts the fetch against the platform: its 45009 is the
// platform's quota of api_authorizer_token, which all the platform's
// authorizers share. So it is rescued with the platform's resets too, from
// the platform's budgets in the platform's ledger (Attempt.QuotaApp), and
// once a China day for all of them. Not with the authorizer's own 10
// (clear_quota with the component token and the authorizer's appid, or
// component/clear_quota/v2 with its appid): those reset the account's own
// APIs, not the platform's call, and spend a reset the account's people
// may need in the console.

// The platform's resets, as the ledger and the metrics name them; both
// spend the platform account's 10 a month (budgetAccount).
const (
	apiComponentClearQuota   = "component_clear_quota"
	apiComponentClearQuotaV2 = "component_clear_quota_v2"
)

// NewPlatformRescuer returns the rescuer of the spent quota of platform
// componentAppID's fetches (its component token's and its authorizers'),
// which resets it through client, with the platform's secret for the reset
// that takes no token.
func NewPlatformRescuer(policy RescuePolicy, componentAppID string, secret upstream.Secret, client *upstream.Client) *Rescuer {
	r := NewRescuer(policy, componentAppID, secret, client)
	r.platform = true
	return r
}

// platformResets are the resets of every path of the platform: with its
// component token, and with its secret.
func (r *Rescuer) platformResets(token string) (byToken, bySecret reset) {
	return reset{apiComponentClearQuota, budgetAccount, func(ctx context.Context) error { return r.client.ClearComponentQuota(ctx, token, r.appid) }},
		reset{apiComponentClearQuotaV2, budgetAccount, func(ctx context.Context) error {
			return r.client.ClearComponentQuotaBySecret(ctx, r.appid, r.secret)
		}}
}

// Rescuing makes s rescue the platform's spent quota with r (nil: none).
func (s *Component) Rescuing(r *Rescuer) *Component { s.rescue = r; return s }

// Rescuer is the rescuer of the platform's spent quota, which its
// authorizers' fetches spend too.
func (s *Component) Rescuer() *Rescuer { return s.rescue }

// rescueFailed rescues the spent quota of api_component_token with the
// component token held.
func (s *Component) rescueFailed(a *loop.Attempt, err error) (time.Duration, bool) {
	return s.rescue.Failed(a, err, ledger.Path(s.API()), heldValue(a))
}

// Rescuing makes s rescue the spent quota of its fetches with r, its
// platform's rescuer (nil: none).
func (s *Authorizer) Rescuing(r *Rescuer) *Authorizer { s.rescue = r; return s }

// Failed rescues the platform's spent quota of api_authorizer_token, or
// of api_query_auth when the fetch exchanged an authorization code, with
// the component token the fetch was made with.
func (s *Authorizer) Failed(a *loop.Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	path := ledger.Path(s.API())
	if g, _ := a.Grant.(grant); g.code != "" {
		path = pathQueryAuth
	}
	return s.rescue.Failed(a, err, path, a.Token)
}

// pathQueryAuth is the path of an authorization code's exchange, which
// WeChat counts against the platform as api_authorizer_token.
const pathQueryAuth = "/cgi-bin/component/api_query_auth"

var _ loop.FailureHook = (*Authorizer)(nil)
