package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
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

// Stable is POST /cgi-bin/stable_token. Normal mode returns the current
// token, and a new one only in its last 5 minutes, without ending the old
// one: a restart, a standby or a second deployment calling it kills no
// token. Forced mode ends the current token at once; it is spent only on
// a token WeChat says is dead (Force), within WeChat's 20 a day, counted
// in the token bucket.
type Stable struct {
	appid  string
	secret upstream.Secret
	client *upstream.Client
	rescue *Rescuer // of a spent quota; nil: none
}

// NewStable returns the source of appid's stable token, fetched with its
// secret from client's API.
func NewStable(appid string, secret upstream.Secret, client *upstream.Client) *Stable {
	return &Stable{appid: appid, secret: secret, client: client}
}

func (*Stable) API() string { return "stable_token" }

func (s *Stable) Fetch(ctx context.Context, _ *loop.Attempt) (upstream.Issued, error) {
	return s.call(ctx, false)
}

func (s *Stable) call(ctx context.Context, force bool) (upstream.Issued, error) {
	body, err := json.Marshal(struct {
		GrantType    string `json:"grant_type"`
		AppID        string `json:"appid"`
		Secret       string `json:"secret"`
		ForceRefresh bool   `json:"force_refresh"`
	}{"client_credential", s.appid, s.secret.Reveal(), force})
	if err != nil {
		return upstream.Issued{}, &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "cannot build request"}
	}
	status, answer, err := s.client.PostJSON(ctx, "cgi-bin/stable_token", nil, body, s.secret.Reveal())
	if err != nil {
		return upstream.Issued{}, err
	}
	issued, err := upstream.DecodeToken(status, answer, upstream.TokenCodes)
	return issued, upstream.ScrubErrMsg(err, s.secret.Reveal())
}

// Window stays inside the renewal stretch, spread included (a fifth of the
// window): a call before it would only return the same token.
func (*Stable) Window(refreshBefore time.Duration) time.Duration {
	return min(refreshBefore, stableRenewal*3/4)
}

func (*Stable) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// Check asks WeChat whether the token works.
func (s *Stable) Check(ctx context.Context, token string) (bool, error) {
	return s.client.CheckToken(ctx, token)
}

// Record says the token came from stable_token.
func (*Stable) Record(a *loop.Attempt, issued upstream.Issued) kv.Credential {
	rec := kv.NewCredential(a.Key, issued.Value, issued.ExpiresIn, issued.At)
	rec.API = kv.APIStableToken
	return rec
}

// stableForceAPI names a forced refresh in the metrics and the ledger.
const stableForceAPI = "stable_token_force"

// notVerified declines a forced refresh when WeChat could not say whether
// the token is dead: forcing ends it for everyone, and costs one of the
// day's 20.
const notVerified = "could not check the token with WeChat, and a stable token is force-refreshed only when WeChat says it is dead"

// Force replaces a stable token WeChat said is dead, after a normal call
// returned it again. The forced refresh is counted in the app's budget in
// the token bucket before it is asked for, so that no failover and no
// crash after the call forgets it.
func (s *Stable) Force(ctx context.Context, a *loop.Attempt, held kv.Credential, verified bool) (upstream.Issued, error) {
	if !verified {
		return upstream.Issued{}, &loop.Declined{Reason: notVerified}
	}
	a.Log().Warn("WeChat says the stable token is dead and returns it still: forcing a refresh", "appid", a.Key)
	issued, err := a.Call(stableForceAPI, func() error { return s.spend(a) }, func(ctx context.Context) (upstream.Issued, error) {
		return s.call(ctx, true)
	})
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Class == upstream.ClassQuota {
		// WeChat's own count of forced refreshes is spent: normal calls
		// still work, so nothing else pauses.
		return upstream.Issued{}, s.spent(a, ue.ErrCode, fmt.Sprintf("WeChat refused a forced refresh of %s: %s", a.Key, ue.ErrMsg))
	}
	return issued, err
}

// spend takes one forced refresh from the app's budget, or says why it
// cannot: the day's are spent, or the last was under 30 s ago.
func (s *Stable) spend(a *loop.Attempt) error {
	ctx, cancel := context.WithTimeout(a.Context(), bucket.Timeout)
	defer cancel()
	b, key := a.Bucket(), forceBudgetKey(a.Key)
	for attempt := 1; ; attempt++ {
		now := a.Now()
		budget := forceBudget{AppID: a.Key}
		var rev uint64
		e, err := b.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if held, err := decodeForceBudget(a.Key, e.Value()); err == nil {
				budget = held
			} else {
				a.Log().Warn("the force budget in the bucket is undecodable; counting from zero", "appid", a.Key, "error", err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("publisher: cannot read the force budget of %s: %w", a.Key, err)
		}
		if today := now.In(upstream.ChinaTime).Format(time.DateOnly); budget.Day != today {
			budget.Day, budget.Used = today, 0
		}
		if budget.Used >= stableForcesPerDay {
			return s.spent(a, 0, fmt.Sprintf("the %d forced refreshes of %s for today (China time) are spent; the next is possible in %s",
				stableForcesPerDay, a.Key, upstream.UntilQuotaReset(now).Round(time.Minute)))
		}
		if since := now.Sub(budget.Last); since >= 0 && since < stableForceSpacing {
			return &loop.Declined{Reason: fmt.Sprintf("a forced refresh of %s was asked for %s ago; WeChat refreshes at most once per %s",
				a.Key, loop.Elapsed(since), stableForceSpacing), Wait: stableForceSpacing - since}
		}
		budget.Used++
		budget.Last = now
		data, err := encodeForceBudget(budget)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = b.Create(ctx, key, data)
		} else {
			_, err = b.Update(ctx, key, data, rev)
		}
		switch {
		case err == nil:
			return nil
		case bucket.IsConflict(err) && attempt < 3:
			continue // another writer counted one: count again
		}
		return fmt.Errorf("publisher: cannot count the forced refresh of %s in the bucket: %w", a.Key, err)
	}
}

// spent reports a day's forced refreshes spent, by the budget (errcode 0)
// or by WeChat's errcode: in an ERROR log line and a failure event, since
// a dead token now stays dead until midnight China time or its expiry.
func (s *Stable) spent(a *loop.Attempt, errcode int, reason string) error {
	now := a.Now()
	next := now.Add(upstream.UntilQuotaReset(now)).UTC()
	a.Log().Error("forced refresh refused: "+reason, "appid", a.Key, "next_attempt", next.Format(time.RFC3339))
	a.Announce(errcode, reason, upstream.ClassQuota, next)
	return &loop.Declined{Reason: reason, Wait: upstream.UntilQuotaReset(now)}
}

// Ends says that only a forced refresh ends the token held: a call in
// normal mode returns it, or a new one that leaves it working.
func (*Stable) Ends(api string) bool { return api == stableForceAPI }

var (
	_ loop.Ender    = (*Stable)(nil)
	_ loop.Source   = (*Stable)(nil)
	_ loop.Checker  = (*Stable)(nil)
	_ loop.Forcer   = (*Stable)(nil)
	_ loop.Recorder = (*Stable)(nil)
)

// A stable app's forced refreshes are counted in the token bucket, under
// "<appid>.force_budget" (the README's wire contract has its JSON): WeChat
// allows 20 a China day, at least 30 s apart, and the count must outlive a
// failover. Readers of tokens ignore the key; it holds no secret, and only
// the refresher writes it.

// forceBudgetKind is the kind of the key "<appid>.force_budget".
const forceBudgetKind = "force_budget"

// forceBudgetKey is the key of appid's force budget.
func forceBudgetKey(appid string) string { return appid + "." + forceBudgetKind }

// forceBudget is the value of a force budget key.
type forceBudget struct {
	AppID string `json:"appid"`
	// Day is the China-time (UTC+8) date Used counts for, as 2006-01-02:
	// WeChat's day, which starts at 00:00 China time.
	Day  string `json:"day"`
	Used int    `json:"used"`
	// Last is when the last forced refresh was asked of WeChat.
	Last time.Time `json:"last"`
}

var dayPattern = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)

// validate checks the budget against the contract.
func (b forceBudget) validate() error {
	if err := kv.ValidateAppID(b.AppID); err != nil {
		return fmt.Errorf("%w: force budget: %w", kv.ErrInvalidRecord, err)
	}
	if _, err := time.Parse(time.DateOnly, b.Day); err != nil || !dayPattern.MatchString(b.Day) {
		return fmt.Errorf("%w: force budget: day %.20q is not a date such as 2006-01-02", kv.ErrInvalidRecord, b.Day)
	}
	if b.Used < 0 {
		return fmt.Errorf("%w: force budget: used %d is negative", kv.ErrInvalidRecord, b.Used)
	}
	return nil
}

// encodeForceBudget validates b and returns its JSON.
func encodeForceBudget(b forceBudget) ([]byte, error) {
	if err := b.validate(); err != nil {
		return nil, err
	}
	b.Last = b.Last.UTC()
	return json.Marshal(b)
}

// decodeForceBudget decodes the force budget read under appid's force
// budget key and checks that it names appid.
func decodeForceBudget(appid string, data []byte) (forceBudget, error) {
	if len(data) > kv.MaxRecordSize {
		return forceBudget{}, fmt.Errorf("%w: force budget of %d bytes", kv.ErrInvalidRecord, len(data))
	}
	var b forceBudget
	if err := json.Unmarshal(data, &b); err != nil {
		return forceBudget{}, fmt.Errorf("%w: force budget: %w", kv.ErrInvalidRecord, err)
	}
	if err := b.validate(); err != nil {
		return forceBudget{}, err
	}
	if b.AppID != appid {
		return forceBudget{}, fmt.Errorf("%w: force budget names appid %q, stored under %q", kv.ErrInvalidRecord, b.AppID, appid)
	}
	return b, nil
}
