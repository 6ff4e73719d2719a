package kv

import (
	"fmt"
	"maps"
	"regexp"
	"time"
)

// The guardian's part of a ledger: what WeChat's own count of the app's
// calls said (quota/get), the calls it shows that another party made, and
// the resets of a spent quota. The refresher's leader writes them; the
// status command and page read them. None holds a secret.

// QuotaReading is what WeChat's quota/get last said of one API path of an
// app, and what the refresher made of it.
type QuotaReading struct {
	At         time.Time  `json:"at"` // when it was read
	DailyLimit int64      `json:"daily_limit"`
	Used       int64      `json:"used"`
	Remain     int64      `json:"remain"`
	RateLimit  *RateLimit `json:"rate_limit,omitempty"`
	// Ours is the ledger's count of the refresher's own calls to the path
	// on At's China day, when it was read.
	Ours int64 `json:"ours"`
	// Others is the calls to the path on At's China day that were
	// another party's: Used less Ours, beyond WeChat's tolerance.
	Others int64 `json:"others"`
}

// RateLimit is a per-period limit quota/get gives for some paths.
type RateLimit struct {
	CallCount     int64 `json:"call_count"`
	RefreshSecond int64 `json:"refresh_second"`
}

// ForeignFetch is the last time the refresher saw another party's calls
// to a path that issues the app's credentials grow.
type ForeignFetch struct {
	At     time.Time `json:"at"`
	Path   string    `json:"cgi_path"`
	Others int64     `json:"others"` // the day's calls by others when seen
	Count  int       `json:"count"`  // how many times they were seen to grow, ever
}

// Rescue is the last reset of the app's spent daily quota the refresher
// made or declined. Its budgets are the ledger's MonthCalls of the reset
// APIs, counted before each call.
type Rescue struct {
	At      time.Time `json:"at"`
	Path    string    `json:"cgi_path"`          // whose quota was spent (45009)
	API     string    `json:"api,omitempty"`     // the reset called; "" when none was
	Outcome string    `json:"outcome"`           // see the README's wire contract
	ErrCode int       `json:"errcode,omitempty"` // WeChat's answer to the reset, if not 0
	Count   int       `json:"count"`             // rescues made, ever

	// Rescued is the China day (2006-01-02) a rescue of each path's
	// quota was last tried on, by path, marked before its first reset
	// goes: a quota spent again the same day is not reset again
	// (something a reset does not fix spends it).
	Rescued map[string]string `json:"rescued,omitempty"`
	// SpentElsewhere is the China month (2006-01) in which WeChat said a
	// budget of resets was spent (48006) though the ledger had some left
	// (the console's resets, another tool's), by budget ("quota_clear",
	// "clear_quota"): no reset of it is tried again that month.
	SpentElsewhere map[string]string `json:"spent_elsewhere,omitempty"`
	// Unverified is the China month in which WeChat said the account
	// cannot reset its quota (only verified accounts can): said once,
	// not tried again that month.
	Unverified string `json:"unverified,omitempty"`
}

var cgiPath = regexp.MustCompile(`^/[A-Za-z0-9_/.-]{1,200}$`)

// validateGuardian checks the guardian's part of l against the contract.
func (l Ledger) validateGuardian() error {
	for path, q := range l.Quota {
		if !cgiPath.MatchString(path) {
			return fmt.Errorf("%w: ledger: quota of %.70q: not an API path", ErrInvalidRecord, path)
		}
		if q.DailyLimit < 0 || q.Used < 0 || q.Ours < 0 || q.Others < 0 {
			return fmt.Errorf("%w: ledger: quota of %s: a negative count", ErrInvalidRecord, path)
		}
	}
	if f := l.Foreign; f != nil && !cgiPath.MatchString(f.Path) {
		return fmt.Errorf("%w: ledger: foreign fetch of %.70q: not an API path", ErrInvalidRecord, f.Path)
	}
	if r := l.Rescue; r != nil {
		return r.validate()
	}
	return nil
}

// validate checks a rescue against the contract.
func (r Rescue) validate() error {
	if r.Path != "" && !cgiPath.MatchString(r.Path) {
		return fmt.Errorf("%w: ledger: rescue of %.70q: not an API path", ErrInvalidRecord, r.Path)
	}
	if r.API != "" && !ledgerAPI.MatchString(r.API) {
		return fmt.Errorf("%w: ledger: rescue by %.70q: not an API name", ErrInvalidRecord, r.API)
	}
	if r.Count < 0 {
		return fmt.Errorf("%w: ledger: rescue count %d is negative", ErrInvalidRecord, r.Count)
	}
	for path, day := range r.Rescued {
		if !cgiPath.MatchString(path) || !ledgerDay.MatchString(day) {
			return fmt.Errorf("%w: ledger: rescued %.70q on %.20q: not an API path and a date such as 2006-01-02", ErrInvalidRecord, path, day)
		}
	}
	for budget, month := range r.SpentElsewhere {
		if !ledgerAPI.MatchString(budget) || !ledgerMonth.MatchString(month) {
			return fmt.Errorf("%w: ledger: %.70q spent elsewhere in %.20q: not an API name and a month such as 2006-01", ErrInvalidRecord, budget, month)
		}
	}
	if r.Unverified != "" && !ledgerMonth.MatchString(r.Unverified) {
		return fmt.Errorf("%w: ledger: unverified in %.20q: not a month such as 2006-01", ErrInvalidRecord, r.Unverified)
	}
	return nil
}

// cloneGuardian makes l's guardian part its own.
func (l *Ledger) cloneGuardian() {
	if l.Quota != nil {
		q := make(map[string]QuotaReading, len(l.Quota))
		for path, r := range l.Quota {
			if r.RateLimit != nil {
				rl := *r.RateLimit
				r.RateLimit = &rl
			}
			q[path] = r
		}
		l.Quota = q
	}
	if l.Foreign != nil {
		f := *l.Foreign
		l.Foreign = &f
	}
	if l.Rescue != nil {
		r := *l.Rescue
		r.Rescued, r.SpentElsewhere = maps.Clone(r.Rescued), maps.Clone(r.SpentElsewhere)
		l.Rescue = &r
	}
}
