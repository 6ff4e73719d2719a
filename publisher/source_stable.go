package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// WeChat's rules for stable_token.
const (
	// stableRenewal is the last stretch of a stable token's life in which
	// a normal-mode call returns a new one; earlier calls return the same.
	stableRenewal = 5 * time.Minute
	// stableForcesPerDay and stableForceSpacing bound forced refreshes:
	// 20 per app per China day, and a forced call within 30 s of the
	// last does not refresh.
	stableForcesPerDay = 20
	stableForceSpacing = 30 * time.Second
)

// stableSource is POST /cgi-bin/stable_token. Normal mode returns the
// current token, and a new one only in its last 5 minutes, without ending
// the old one: a restart, a standby or a second deployment calling it
// kills no token. Forced mode ends the current token at once; it is
// spent only on a token WeChat says is dead (see forceStable).
type stableSource struct{}

func (stableSource) api() string { return "stable_token" }

func (stableSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	return callStable(ctx, u, g.appid, g.secret, false)
}

// force asks for a new token that ends the current one.
func (stableSource) force(ctx context.Context, u *upstream.Client, appid string, secret Secret) (issuedValue, error) {
	return callStable(ctx, u, appid, secret, true)
}

func callStable(ctx context.Context, u *upstream.Client, appid string, secret Secret, force bool) (issuedValue, error) {
	body, err := json.Marshal(struct {
		GrantType    string `json:"grant_type"`
		AppID        string `json:"appid"`
		Secret       string `json:"secret"`
		ForceRefresh bool   `json:"force_refresh"`
	}{"client_credential", appid, secret.Reveal(), force})
	if err != nil {
		return issuedValue{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "cannot build request"}
	}
	status, answer, err := u.PostJSON(ctx, "cgi-bin/stable_token", nil, body, secret.Reveal())
	if err != nil {
		return issuedValue{}, err
	}
	f, err := upstream.DecodeToken(status, answer, upstream.TokenCodes)
	return issuedValue{Issued: f}, upstream.ScrubErrMsg(err, secret.Reveal())
}

// window stays inside the renewal stretch, spread included (a fifth of the
// window): a call before it would only return the same token.
func (stableSource) window(refreshBefore time.Duration) time.Duration {
	return min(refreshBefore, stableRenewal*3/4)
}

func (stableSource) checkable() bool { return true }

func (stableSource) wecom() bool { return false }

func (stableSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// budgetError is a forced refresh not asked of WeChat, because the app's
// budget of them is spent or the last one is too recent.
type budgetError struct {
	reason string
	wait   time.Duration // until a forced refresh may be asked for again
}

func (e *budgetError) Error() string { return "publisher: " + e.reason }

// errNotVerified stops a forced stable refresh when WeChat could not say
// whether the token is dead: forcing ends it for everyone, and costs one of
// the day's 20.
var errNotVerified = errors.New("publisher: could not check the token with WeChat, and a stable token is force-refreshed only when WeChat says it is dead")

// forceStable replaces a stable token WeChat said is dead, after a normal
// call returned it again. The forced refresh is counted in the app's
// budget in the token bucket before it is asked for, so that no failover
// and no crash after the call forgets it.
func (r *Refresher) forceStable(t *term, a *credential, secret Secret) (issuedValue, time.Duration, error) {
	r.log.Warn("WeChat says the stable token is dead and returns it still: forcing a refresh", "appid", a.key)
	spend := func() error { return r.spendForce(t, a.key) }
	issued, latency, err := r.callUpstream(t, a, "stable_token_force", secret, spend, func(ctx context.Context) (issuedValue, error) {
		return stableSource{}.force(ctx, r.wechat, a.key, secret)
	})
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Class == upstream.ClassQuota {
		// WeChat's own count of forced refreshes is spent: normal calls
		// still work, so nothing else pauses.
		return issuedValue{}, 0, r.forcesSpent(a.key, ue.ErrCode, fmt.Sprintf("WeChat refused a forced refresh of %s: %s", a.key, ue.ErrMsg))
	}
	return issued, latency, err
}

// spendForce takes one forced refresh from appid's budget, or says why it
// cannot: the day's are spent, or the last was under 30 s ago.
func (r *Refresher) spendForce(t *term, appid string) error {
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	key := forceBudgetKey(appid)
	for attempt := 1; ; attempt++ {
		now := r.cfg.Clock.now()
		budget := forceBudget{AppID: appid}
		var rev uint64
		e, err := t.bucket.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if b, err := decodeForceBudget(appid, e.Value()); err == nil {
				budget = b
			} else {
				r.log.Warn("the force budget in the bucket is undecodable; counting from zero", "appid", appid, "error", err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("publisher: cannot read the force budget of %s: %w", appid, err)
		}
		if today := now.In(upstream.ChinaTime).Format(time.DateOnly); budget.Day != today {
			budget.Day, budget.Used = today, 0
		}
		if budget.Used >= stableForcesPerDay {
			return r.forcesSpent(appid, 0, fmt.Sprintf("the %d forced refreshes of %s for today (China time) are spent; the next is possible in %s",
				stableForcesPerDay, appid, upstream.UntilQuotaReset(now).Round(time.Minute)))
		}
		if since := now.Sub(budget.Last); since >= 0 && since < stableForceSpacing {
			return &budgetError{reason: fmt.Sprintf("a forced refresh of %s was asked for %s ago; WeChat refreshes at most once per %s",
				appid, elapsed(since), stableForceSpacing), wait: stableForceSpacing - since}
		}
		budget.Used++
		budget.Last = now
		data, err := encodeForceBudget(budget)
		if err != nil {
			return err
		}
		_, err = casPut(ctx, t.bucket, key, data, rev)
		switch {
		case err == nil:
			return nil
		case bucket.IsConflict(err) && attempt < 3:
			continue // another writer counted one: count again
		}
		return fmt.Errorf("publisher: cannot count the forced refresh of %s in the bucket: %w", appid, err)
	}
}

// forcesSpent reports a day's forced refreshes spent, by the budget
// (errcode 0) or by WeChat's errcode: in an ERROR log line and a failure
// event, since a dead token now stays dead until midnight China time or
// its expiry.
func (r *Refresher) forcesSpent(appid string, errcode int, reason string) error {
	now := r.cfg.Clock.now()
	next := now.Add(upstream.UntilQuotaReset(now)).UTC()
	r.log.Error("forced refresh refused: "+reason, "appid", appid, "next_attempt", next.Format(time.RFC3339))
	r.publishFailure(kv.FailureEvent{AppID: appid, ErrCode: errcode, ErrMsg: reason, Class: string(upstream.ClassQuota), NextAttempt: next})
	return &budgetError{reason: reason, wait: upstream.UntilQuotaReset(now)}
}
