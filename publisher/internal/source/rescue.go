package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/ledger"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A fetch that gets 45009 (the day's quota of its API spent) while the
// value held expires before the quota resets at 00:00 China time would
// leave every service without it until midnight. WeChat offers resets for
// exactly this (WECHAT.md §8); the rescue spends one, in this order,
// stopping at the first that works: quota/clear for the one path (its own
// budget), clear_quota with the still-valid token, clear_quota/v2 with
// the AppSecret (no token needed). Each is counted in the app's ledger
// before it goes, in the same compare-and-swap write that checks its
// monthly budget (Attempt.LeaderCall), so that no failover and no crash
// spends one twice. After a reset the fetch goes again at once, once: a
// path's rescue is tried at most once a China day, marked in the ledger
// before its first reset goes (claim).

// RescuePolicy is how the refresher rescues a spent quota: its flags.
type RescuePolicy struct {
	Off bool // --quota-rescue=false: say so, reset nothing
	// Reserve is the account's resets a month left for people in
	// WeChat's console (--quota-clear-reserve).
	Reserve int
}

// WeChat's monthly budgets of resets, per account and China month.
const (
	// PathResets is quota/clear's: one API path at a time.
	PathResets = 50
	// AccountResets is the whole account's, shared by clear_quota,
	// clear_quota/v2 and the console.
	AccountResets = 10
)

// The resets, as the ledger and the metrics name them, and their budgets.
const (
	apiClearPath    = kv.ResetPath
	apiClearQuota   = "clear_quota"
	apiClearQuotaV2 = "clear_quota_v2"

	budgetPath    = apiClearPath  // quota/clear's own
	budgetAccount = apiClearQuota // clear_quota and clear_quota/v2 share it
)

// The outcomes of a rescue, in its event, its metric and the ledger.
const (
	OutcomeRescued        = "rescued"         // a reset worked: fetching again
	OutcomeOff            = "off"             // --quota-rescue=false
	OutcomeReserve        = "reserve"         // the budget wxtoken may spend is spent
	OutcomeSpentElsewhere = "spent_elsewhere" // WeChat said 48006 with budget left
	OutcomeNotClearable   = "not_clearable"   // 76021/76022: quota/clear does not take the path
	OutcomeUnverified     = "unverified"      // the account may not reset (48001)
	OutcomeAgain          = "again"           // a rescue of the path was tried today already
	OutcomeFailed         = "failed"          // another refusal (40013, a token refused, no answer)
)

// Rescuer rescues the spent quota of one app's fetches.
type Rescuer struct {
	policy   RescuePolicy
	appid    string
	secret   upstream.Secret // for clear_quota/v2
	client   *upstream.Client
	platform bool // a third-party platform's: its own resets (platformrescue.go)

	mu sync.Mutex
	// fetchedAgain is, by credential key, the China day it last fetched
	// again after a rescue of its path: its own, or another's (shared).
	fetchedAgain map[string]string
}

// NewRescuer returns the rescuer of appid's spent quota, which resets it
// through client, with secret for the reset that takes no token.
func NewRescuer(policy RescuePolicy, appid string, secret upstream.Secret, client *upstream.Client) *Rescuer {
	return &Rescuer{policy: policy, appid: appid, secret: secret, client: client}
}

// reset is one of the resets a rescue may call.
type reset struct {
	api    string
	budget string
	call   func(ctx context.Context) error
}

// resets are the resets of path, in order; token is the account's
// still-valid token ("" for none: only the reset by secret).
func (r *Rescuer) resets(path, token string) []reset {
	byToken, bySecret := r.accountResets(token)
	var rs []reset
	if token != "" {
		rs = append(rs, reset{apiClearPath, budgetPath, func(ctx context.Context) error { return r.client.ClearPath(ctx, token, path) }}, byToken)
	}
	if r.secret.Reveal() != "" {
		rs = append(rs, bySecret)
	}
	return rs
}

// accountResets are the resets of every path of r's account: with its
// token, and with its secret. A platform has its own (platformrescue.go).
func (r *Rescuer) accountResets(token string) (byToken, bySecret reset) {
	if r.platform {
		return r.platformResets(token)
	}
	return reset{apiClearQuota, budgetAccount, func(ctx context.Context) error { return r.client.ClearQuota(ctx, token, r.appid) }},
		reset{apiClearQuotaV2, budgetAccount, func(ctx context.Context) error { return r.client.ClearQuotaBySecret(ctx, r.appid, r.secret) }}
}

// Failed rescues the quota of path when err is a fetch's 45009 and the
// value held would expire before the quota resets; token is the account's
// token the resets are asked with ("" for none). ok is true, with wait 0,
// when a reset worked: fetch again at once.
func (r *Rescuer) Failed(a *loop.Attempt, err error, path, token string) (wait time.Duration, ok bool) {
	if r == nil || a == nil || upstream.ClassOf(err) != upstream.ClassQuota {
		return 0, false
	}
	now := a.Now()
	midnight := now.Add(upstream.UntilQuotaReset(now))
	held, holds := a.Held()
	if holds && !held.ExpiresAt.Before(midnight) {
		return 0, false // the value held outlasts the day: nobody waits for the quota
	}
	res := &rescue{r: r, a: a, path: path, now: now, next: midnight,
		day: now.In(upstream.ChinaTime).Format(time.DateOnly), month: now.In(upstream.ChinaTime).Format("2006-01")}
	if holds {
		res.expires = held.ExpiresAt
	}
	return res.run(token)
}

// rescue is one rescue under way.
type rescue struct {
	r          *Rescuer
	a          *loop.Attempt
	path       string
	now, next  time.Time // next: when the quota resets by itself
	expires    time.Time // the value held's expiry; zero: none is held
	day, month string    // China time's

	steps []string // what each reset tried did, for the event
}

// afterAnotherRescue is how long a credential whose fetch got 45009 on a
// path another credential's rescue reset today (or is resetting) waits
// before it fetches again: the platform's authorizers share the quota of
// api_authorizer_token, an app's two tickets that of getticket, and a
// fetch answered before the reset landed is no sign that the reset did
// not work. Long enough for a rescue under way to land.
const afterAnotherRescue = time.Minute

// fetchAgain reports whether the credential key may fetch again today
// after a rescue of its path, once a China day, and marks that it has.
// It is this replica's memory: a new leader may let one more through (a
// call WeChat refuses, at most).
func (r *Rescuer) fetchAgain(key, day string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fetchedAgain[key] == day {
		return false
	}
	if r.fetchedAgain == nil {
		r.fetchedAgain = map[string]string{}
	}
	r.fetchedAgain[key] = day
	return true
}

// errBudget and errSpentElsewhere are a reset refused by its budget in
// the ledger, before any call.
var (
	errBudget         = errors.New("budget at the reserve")
	errSpentElsewhere = errors.New("budget spent elsewhere this month")
)

// claim marks the path's rescue as tried today in the ledger, before any
// reset goes, unless it was already (claimed false): a leader SIGKILLed
// right after a reset leaves it marked, and the next does not reset it
// again. A leader that dies before its first reset leaves the day's
// rescue of the path undone.
func (res *rescue) claim() (claimed bool, err error) {
	err = res.a.UpdateLedger(func(l *kv.Ledger) bool {
		claimed = l.Day == "" // no ledger to mark (none counted yet): go on unmarked
		if l.Day == "" || l.Rescue != nil && l.Rescue.Rescued[res.path] == res.day {
			return false
		}
		r := kv.Rescue{}
		if l.Rescue != nil {
			r = *l.Rescue // l is the write's own copy: its maps too
		}
		if r.Rescued == nil {
			r.Rescued = map[string]string{}
		}
		r.Rescued[res.path] = res.day
		l.Rescue = &r
		claimed = true
		return true
	})
	return claimed, err
}

// unclaim takes back claim's mark, when no reset went.
func (res *rescue) unclaim() {
	err := res.a.UpdateLedger(func(l *kv.Ledger) bool {
		if l.Rescue == nil || l.Rescue.Rescued[res.path] != res.day {
			return false
		}
		r := *l.Rescue
		r.Rescued = maps.Clone(r.Rescued)
		delete(r.Rescued, res.path)
		l.Rescue = &r
		return true
	})
	if err != nil {
		res.a.Log().Warn("the rescue's mark for today is left in the ledger though no reset went; the quota is not reset again today", "appid", res.a.Key, "cgi_path", res.path, "error", err)
	}
}

// retryAfterDoubt is how soon a fetch goes again whose rescue the lease's
// doubt stopped before any reset went.
const retryAfterDoubt = 2 * time.Second

func (res *rescue) run(token string) (time.Duration, bool) {
	if res.r.policy.Off {
		res.refused(OutcomeOff, "", 0, "rescue is off (--quota-rescue=false)")
		return 0, false
	}
	l, _, err := res.a.Ledger()
	if err != nil {
		res.log().Warn("cannot rescue the spent quota: the ledger cannot be read, and a budget that cannot be read is not spent", "error", err)
		return 0, false
	}
	if l.Rescue != nil && l.Rescue.Unverified == res.month {
		return 0, false // said once this month: the account may not reset
	}
	switch claimed, err := res.claim(); {
	case err != nil:
		res.log().Warn("cannot rescue the spent quota: the ledger cannot be written", "error", err)
		return 0, false
	case !claimed && res.r.fetchAgain(res.a.Key, res.day):
		res.log().Warn(fmt.Sprintf("the day's quota of %s is spent (45009), and a rescue of it was tried today for another credential that spends it too, or is under way: fetching again in %s, once, in case this answer came before the reset", res.path, afterAnotherRescue))
		return afterAnotherRescue, true
	case !claimed:
		res.refused(OutcomeAgain, "", 0, "a rescue of it was tried once today already")
		return 0, false
	}
	res.r.fetchAgain(res.a.Key, res.day) // after its own rescue
	outcome, api, errcode := OutcomeNotClearable, "", 0
	called := false // a reset went to WeChat
	for _, rs := range res.r.resets(res.path, token) {
		err := res.a.LeaderCall(rs.api, res.allow(rs.budget), func(ctx context.Context) error {
			called = true
			return rs.call(ctx)
		})
		var ue *upstream.Error
		errors.As(err, &ue)
		switch {
		case err == nil:
			res.rescued(rs)
			return 0, true
		case errors.Is(err, loop.ErrEnding) && !called:
			// The lease came into doubt, or the term ended, before any
			// reset went: the day's rescue is not spent on that. If the
			// term goes on, the fetch goes again in a moment and the
			// rescue with it.
			res.unclaim()
			return retryAfterDoubt, true
		case errors.Is(err, loop.ErrEnding):
			return 0, false
		case errors.Is(err, errSpentElsewhere):
			res.steps = append(res.steps, rs.api+": "+err.Error())
			outcome, api, errcode = OutcomeSpentElsewhere, rs.budget, upstream.CodeResetsSpent
			continue // counted and said when it was learnt
		case errors.Is(err, errBudget):
			outcome, api, errcode = OutcomeReserve, rs.budget, 0
		case ue != nil && ue.ErrCode == upstream.CodeUnverified:
			res.unverified(rs, ue)
			return 0, false
		case ue != nil && ue.ErrCode == upstream.CodeResetsSpent:
			outcome, api, errcode = OutcomeSpentElsewhere, rs.api, ue.ErrCode
			res.spentElsewhere(rs.budget)
		case ue != nil && (ue.ErrCode == upstream.CodeNotClearable || ue.ErrCode == upstream.CodePathNotClearable):
			outcome, api, errcode = OutcomeNotClearable, rs.api, ue.ErrCode
		default:
			outcome, api, errcode = OutcomeFailed, rs.api, 0
			if ue != nil {
				errcode = ue.ErrCode
			}
		}
		res.step(rs, outcome, err)
	}
	res.refused(outcome, api, errcode, "no reset worked: "+strings.Join(res.steps, "; "))
	return 0, false
}

// allow checks, in the ledger's write that counts the reset, that budget
// has a reset wxtoken may spend.
func (res *rescue) allow(budget string) func(kv.Ledger) error {
	return func(l kv.Ledger) error {
		if r := l.Rescue; r != nil && r.SpentElsewhere[budget] == res.month {
			return errSpentElsewhere
		}
		if res.r.remaining(l, budget, res.month) <= 0 {
			return errBudget
		}
		return nil
	}
}

// remaining is how many resets of budget wxtoken may still spend in
// month, by l.
func (r *Rescuer) remaining(l kv.Ledger, budget, month string) int {
	spent := 0
	if l.Month == month {
		spent = l.AccountResets()
		if budget == budgetPath {
			spent = l.PathResets()
		}
	}
	if budget == budgetPath {
		return max(PathResets-spent, 0)
	}
	return max(AccountResets-r.policy.Reserve-spent, 0)
}

// rescued says that a reset worked: the fetch goes again at once.
func (res *rescue) rescued(rs reset) {
	left := res.budgets()[rs.budget]
	res.a.Metrics().QuotaRescue(res.a.QuotaApp(), rs.api, OutcomeRescued)
	msg := fmt.Sprintf("the day's quota of %s was spent (45009) and the value held expires before it resets at 00:00 China time: reset it with %s, fetching again now; %d resets of this budget left to wxtoken this month",
		res.path, rs.api, left)
	if left == 0 {
		res.log().Error("quota rescued with the last reset wxtoken may spend this month: "+msg+
			". The next spent quota this month is not rescued: find what spends it (wxtoken status shows the calls per path), or reset it in WeChat's console",
			"reset", rs.api)
	} else {
		res.log().Warn("quota rescued: "+msg, "reset", rs.api, "budget_remaining", left)
	}
	res.a.Publish(kv.FailureEvent{ErrCode: 45009, ErrMsg: "the day's quota of " + res.path + " was spent; reset with " + rs.api,
		Class: string(upstream.ClassQuota), NextAttempt: res.now, Rescue: OutcomeRescued, Path: res.path, ResetAPI: rs.api, BudgetRemaining: &left})
	res.record(func(r *kv.Rescue) {
		r.API, r.Outcome, r.ErrCode = rs.api, OutcomeRescued, 0
		r.Count++
	})
}

// step says what one reset that did not work did, and goes on.
func (res *rescue) step(rs reset, outcome string, err error) {
	res.steps = append(res.steps, rs.api+": "+err.Error())
	res.a.Metrics().QuotaRescue(res.a.QuotaApp(), rs.api, outcome)
	res.log().Warn("quota reset not made or refused; trying the next", "reset", rs.api, "outcome", outcome, "error", err)
}

// spentElsewhere records that WeChat said budget is spent this month
// though the ledger had some left: no reset of it is tried again this
// month.
func (res *rescue) spentElsewhere(budget string) {
	res.record(func(r *kv.Rescue) {
		if r.SpentElsewhere == nil {
			r.SpentElsewhere = map[string]string{}
		}
		r.SpentElsewhere[budget] = res.month
	})
}

// unverified says, once a month, that the account may not reset its
// quota: a config failure, for a human.
func (res *rescue) unverified(rs reset, ue *upstream.Error) {
	res.a.Metrics().QuotaRescue(res.a.QuotaApp(), rs.api, OutcomeUnverified)
	res.log().Error("cannot rescue the spent quota: WeChat says the account may not reset it (only verified (认证) accounts can). "+
		"Services lose the value held when it expires, until 00:00 China time. Verify the account in WeChat's console, or keep the quota from running out (wxtoken status shows the calls per path). Not tried again this month",
		"reset", rs.api, "errcode", ue.ErrCode, "value_expires_at", res.expiry(), "quota_resets_at", res.next.UTC().Format(time.RFC3339))
	res.a.Publish(kv.FailureEvent{ErrCode: ue.ErrCode, ErrMsg: "the account may not reset its quota: only verified accounts can",
		Class: string(upstream.ClassConfig), NextAttempt: res.next, Rescue: OutcomeUnverified, Path: res.path, ResetAPI: rs.api})
	res.record(func(r *kv.Rescue) {
		r.API, r.Outcome, r.ErrCode = rs.api, OutcomeUnverified, ue.ErrCode
		r.Unverified = res.month
	})
}

// refused says that the spent quota is not rescued: the services lose the
// value held when it expires, until the quota resets. api is the reset (or
// budget) whose refusal decided it, "" when none was tried; the metric
// counted each reset tried (step), and counts a refusal before any under
// "none".
func (res *rescue) refused(outcome, api string, errcode int, why string) {
	if api == "" {
		res.a.Metrics().QuotaRescue(res.a.QuotaApp(), "none", outcome)
	}
	fix := refusedFix[outcome]
	res.log().Error(fmt.Sprintf("the day's quota of %s is spent (45009) and not rescued: %s. Services lose the value held when it expires, until 00:00 China time. %s", res.path, why, fix),
		"outcome", outcome, "value_expires_at", res.expiry(), "quota_resets_at", res.next.UTC().Format(time.RFC3339))
	ev := kv.FailureEvent{ErrCode: errcode, ErrMsg: "the day's quota of " + res.path + " is spent and not rescued: " + why,
		Class: string(upstream.ClassQuota), NextAttempt: res.next, Rescue: outcome, Path: res.path, ResetAPI: api}
	if api != "" {
		left := res.budgets()[budgetOf(api)]
		ev.BudgetRemaining = &left
	}
	res.a.Publish(ev)
	res.record(func(r *kv.Rescue) { r.API, r.Outcome, r.ErrCode = api, outcome, errcode })
}

// refusedFix is what an operator does about a rescue refused.
var refusedFix = map[string]string{
	OutcomeOff:            "Reset the quota in WeChat's console (接口额度 / 清空调用次数), or turn the rescue on (--quota-rescue)",
	OutcomeReserve:        "The resets kept for the console by --quota-clear-reserve are left: reset the quota there, and find what spends it (wxtoken status shows the calls per path)",
	OutcomeSpentElsewhere: "WeChat says this month's resets are spent, by the console or another tool: find what spends the quota (wxtoken status shows the calls per path)",
	OutcomeNotClearable:   "WeChat resets none of this account's quota this way: reset it in WeChat's console",
	OutcomeAgain:          "A quota spent twice in a day is spent by something a reset does not stop (another system fetching with the AppSecret?): find it (wxtoken status), and reset the quota in WeChat's console",
	OutcomeFailed:         "Read the errors above; reset the quota in WeChat's console",
}

// budgetOf is the budget api's resets spend.
func budgetOf(api string) string {
	if api == apiClearPath {
		return budgetPath
	}
	return budgetAccount
}

// budgets reads what is left of each budget, sets the gauges, and returns
// them by budget; none is known when the ledger cannot be read.
func (res *rescue) budgets() map[string]int {
	left := map[string]int{}
	l, _, err := res.a.Ledger()
	if err != nil {
		return left
	}
	for _, b := range []string{budgetPath, budgetAccount} {
		left[b] = res.r.remaining(l, b, res.month)
		res.a.Metrics().QuotaClearBudget(res.a.QuotaApp(), b, left[b])
	}
	return left
}

// record puts what the rescue did in the ledger's Rescue, for `wxtoken
// status` and the page.
func (res *rescue) record(change func(*kv.Rescue)) {
	err := res.a.UpdateLedger(func(l *kv.Ledger) bool {
		if l.Day == "" {
			return false // no ledger yet: nothing counted to add to
		}
		r := kv.Rescue{}
		if l.Rescue != nil {
			r = *l.Rescue
		}
		r.At, r.Path = res.now.UTC(), res.path
		change(&r)
		l.Rescue = &r
		return true
	})
	if err != nil {
		res.log().Warn("the rescue of the spent quota is not recorded in the ledger", "error", err)
	}
}

// log is the refresher's logger, with the credential and the path, and
// the app whose quota it is when that is another (a platform's, for an
// authorizer's token): its ledger and metrics hold the rescue.
func (res *rescue) log() *slog.Logger {
	log := res.a.Log().With("appid", res.a.Key, "cgi_path", res.path)
	if app, own := res.a.QuotaApp(), keyApp(res.a.Key); app != own {
		log = log.With("quota_app", app)
	}
	return log
}

// keyApp is the app of the credential key.
func keyApp(key string) string {
	appid, _ := kv.SplitKey(key)
	return appid
}

// expiry is when the value held expires, for the log.
func (res *rescue) expiry() string {
	if res.expires.IsZero() {
		return "expired"
	}
	return res.expires.UTC().Format(time.RFC3339)
}

// The fetches whose spent quota is rescued: each asks its rescuer, with
// its API path and the account's token it holds.

// Rescuing makes t rescue its app's spent quota with r (nil: none).
func (s *Token) Rescuing(r *Rescuer) *Token { s.rescue = r; return s }

// Failed rescues the spent quota of /cgi-bin/token with the token held.
func (s *Token) Failed(a *loop.Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	return s.rescue.Failed(a, err, ledger.Path(s.API()), heldValue(a))
}

// Rescuing makes s rescue its app's spent quota with r (nil: none).
func (s *Stable) Rescuing(r *Rescuer) *Stable { s.rescue = r; return s }

// Failed rescues the spent quota of /cgi-bin/stable_token with the token
// held.
func (s *Stable) Failed(a *loop.Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	return s.rescue.Failed(a, err, ledger.Path(s.API()), heldValue(a))
}

// Rescuing makes s rescue its app's spent quota with r (nil: none).
func (s *Ticket) Rescuing(r *Rescuer) *Ticket { s.rescue = r; return s }

// Failed rescues the spent quota of getticket with the app's token the
// fetch was made with.
func (s *Ticket) Failed(a *loop.Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	return s.rescue.Failed(a, err, ledger.Path(s.API()), a.Token)
}

// heldValue is the token a holds, "" for none valid.
func heldValue(a *loop.Attempt) string {
	if a == nil {
		return ""
	}
	held, _ := a.Held()
	return held.Value
}

var (
	_ loop.FailureHook = (*Token)(nil)
	_ loop.FailureHook = (*Stable)(nil)
	_ loop.FailureHook = (*Ticket)(nil)
)
