package kv

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"time"
)

// KindLedger is the kind of the key "<appid>.ledger": the refresher's own
// calls to WeChat for the app, counted before each is made, by every
// replica, so that the count survives a failover. Readers of tokens ignore
// it (ValidateKey refuses its kind); it holds no secret, and only the
// refresher writes it.
const KindLedger = "ledger"

// LedgerKey is the key of appid's ledger.
func LedgerKey(appid string) string { return appid + "." + KindLedger }

// chinaTime is UTC+8, where WeChat's day, and so its daily quotas, starts.
var chinaTime = time.FixedZone("UTC+8", 8*60*60)

// Ledger is the value of a ledger key.
type Ledger struct {
	AppID string `json:"appid"`
	// Since is when the ledger began counting: of a value fetched before
	// it, the ledger cannot say whether the refresher ended it.
	Since time.Time `json:"since"`
	// Day is the China-time (UTC+8) date Calls counts for, as 2006-01-02;
	// Month the China-time month MonthCalls counts for, as 2006-01.
	Day        string         `json:"day"`
	Calls      map[string]int `json:"calls"`
	Month      string         `json:"month"`
	MonthCalls map[string]int `json:"month_calls"`
	// Late is the calls of Day counted in its last DayEndSlack, by API;
	// Straddling the day before's Late. WeChat dates a call when it
	// arrives, so these may be counted by it on the next day.
	Late       map[string]int `json:"late,omitempty"`
	Straddling map[string]int `json:"straddling,omitempty"`
	// LastEnding is when the refresher last made a call that ends the
	// app's token held (a /cgi-bin/token fetch, a forced stable_token):
	// a token fetched before it is the refresher's own to have ended.
	LastEnding time.Time `json:"last_ending,omitzero"`
	// LastEndingCalls is how many such calls went in LastEnding's second.
	LastEndingCalls int `json:"last_ending_calls,omitempty"`
	// Elsewhere is the last token of the app another party ended.
	Elsewhere *Elsewhere `json:"invalidated_elsewhere,omitempty"`

	// The guardian's part (quota.go): WeChat's count of the app's calls
	// per API path as last read, by path; the last growth of another
	// party's calls; the last rescue of a spent quota.
	Quota   map[string]QuotaReading `json:"quota,omitempty"`
	Foreign *ForeignFetch           `json:"foreign_fetch,omitempty"`
	Rescue  *Rescue                 `json:"rescue,omitempty"`
}

// Elsewhere is a token the refresher stored that WeChat said was dead
// before its expiry, with no call of the refresher's since its fetch that
// could have ended it: another party holds the app's secret.
type Elsewhere struct {
	At        time.Time `json:"at"` // when WeChat said it was dead
	Revision  uint64    `json:"revision"`
	FetchedAt time.Time `json:"fetched_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// BeforeExpirySeconds is how long before its expiry it died.
	BeforeExpirySeconds int64 `json:"before_expiry_seconds"`
	// Count is how many tokens of the app were ended so, ever.
	Count int `json:"count"`
}

// Count counts one call under api at now, and, if ends, records it as the
// last call that ends the app's token (unless a later one is recorded). A
// new China day or month starts its count from zero; a call of a day or
// month before the ledger's (one counted late) is not counted in it.
func (l *Ledger) Count(api string, now time.Time, ends bool) {
	if l.Since.IsZero() {
		l.Since = now.UTC()
	}
	china := now.In(chinaTime)
	if day := china.Format(time.DateOnly); day > l.Day || l.Calls == nil {
		l.Straddling = nil
		if l.Day == china.AddDate(0, 0, -1).Format(time.DateOnly) {
			l.Straddling = l.Late
		}
		l.Day, l.Calls, l.Late = day, map[string]int{}, nil
	}
	if month := china.Format("2006-01"); month > l.Month || l.MonthCalls == nil {
		l.Month, l.MonthCalls = month, map[string]int{}
	}
	if china.Format(time.DateOnly) == l.Day {
		l.Calls[api]++
		if midnight := time.Date(china.Year(), china.Month(), china.Day()+1, 0, 0, 0, 0, chinaTime); midnight.Sub(china) <= DayEndSlack {
			if l.Late == nil {
				l.Late = map[string]int{}
			}
			l.Late[api]++
		}
	}
	if china.Format("2006-01") == l.Month {
		l.MonthCalls[api]++
	}
	if !ends || now.Before(l.LastEnding) {
		return
	}
	if l.LastEnding.Truncate(time.Second).Equal(now.Truncate(time.Second)) {
		l.LastEndingCalls++
	} else {
		l.LastEndingCalls = 1
	}
	l.LastEnding = now.UTC()
}

// DayEndSlack is how close to China midnight a call counted before it
// may reach WeChat after it (the call's own time, clocks apart), to be
// counted by WeChat on the next day.
const DayEndSlack = 10 * time.Second

// Straddled returns the calls, by API, that the ledger counted on the day
// before day in its last DayEndSlack, which WeChat may count on day.
func (l Ledger) Straddled(day string) map[string]int {
	switch {
	case l.Day == day:
		return l.Straddling
	case l.Day != "" && l.Day < day:
		if d, err := time.ParseInLocation(time.DateOnly, day, chinaTime); err == nil && d.AddDate(0, 0, -1).Format(time.DateOnly) == l.Day {
			return l.Late
		}
	}
	return nil
}

// Ours reports whether a token fetched at fetchedAt (a record's
// fetched_at, in whole seconds) may have been ended by the refresher: the
// ledger began after it, or records a call that ends the token after its
// fetch. A token restored from a backup, or one a replica replaced
// without storing its successor, is so. fetched_at has whole seconds
// only, and the call that fetched the token may itself be one that ends
// (a /cgi-bin/token fetch): in the token's second, only a second such
// call is surely a later one.
func (l Ledger) Ours(fetchedAt time.Time) bool {
	fetched := fetchedAt.Truncate(time.Second)
	last := l.LastEnding.Truncate(time.Second)
	return l.Since.IsZero() || fetched.Before(l.Since.Truncate(time.Second)) ||
		last.After(fetched) || last.Equal(fetched) && l.LastEndingCalls >= 2
}

var (
	ledgerDay   = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)
	ledgerMonth = regexp.MustCompile(`^\d{4}-\d{2}$`)
	ledgerAPI   = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)
)

// validate checks the ledger against the contract.
func (l Ledger) validate() error {
	if err := ValidateAppID(l.AppID); err != nil {
		return fmt.Errorf("%w: ledger: %w", ErrInvalidRecord, err)
	}
	if !ledgerDay.MatchString(l.Day) {
		return fmt.Errorf("%w: ledger: day %.20q is not a date such as 2006-01-02", ErrInvalidRecord, l.Day)
	}
	if !ledgerMonth.MatchString(l.Month) {
		return fmt.Errorf("%w: ledger: month %.20q is not a month such as 2006-01", ErrInvalidRecord, l.Month)
	}
	if l.LastEndingCalls < 0 {
		return fmt.Errorf("%w: ledger: last_ending_calls %d is negative", ErrInvalidRecord, l.LastEndingCalls)
	}
	for _, calls := range []map[string]int{l.Calls, l.MonthCalls, l.Late, l.Straddling} {
		for api, n := range calls {
			if !ledgerAPI.MatchString(api) || n < 0 {
				return fmt.Errorf("%w: ledger: %.70q: %d calls", ErrInvalidRecord, api, n)
			}
		}
	}
	return l.validateGuardian()
}

// EncodeLedger validates l and returns its JSON, which must fit in a
// value of the bucket, as DecodeLedger checks.
func EncodeLedger(l Ledger) ([]byte, error) {
	if err := l.validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(l)
	if err == nil && len(data) > MaxRecordSize {
		return nil, fmt.Errorf("%w: ledger of %d bytes, over %d", ErrInvalidRecord, len(data), MaxRecordSize)
	}
	return data, err
}

// DecodeLedger decodes the ledger read under appid's ledger key and checks
// that it names appid.
func DecodeLedger(appid string, data []byte) (Ledger, error) {
	if len(data) > MaxRecordSize {
		return Ledger{}, fmt.Errorf("%w: ledger of %d bytes", ErrInvalidRecord, len(data))
	}
	var l Ledger
	if err := json.Unmarshal(data, &l); err != nil {
		return Ledger{}, fmt.Errorf("%w: ledger: %w", ErrInvalidRecord, err)
	}
	if err := l.validate(); err != nil {
		return Ledger{}, err
	}
	if l.AppID != appid {
		return Ledger{}, fmt.Errorf("%w: ledger names appid %q, stored under %q", ErrInvalidRecord, l.AppID, appid)
	}
	return l, nil
}

// Clone returns a copy of l that shares nothing with it.
func (l Ledger) Clone() Ledger {
	l.Calls, l.MonthCalls = maps.Clone(l.Calls), maps.Clone(l.MonthCalls)
	l.Late, l.Straddling = maps.Clone(l.Late), maps.Clone(l.Straddling)
	if l.Elsewhere != nil {
		e := *l.Elsewhere
		l.Elsewhere = &e
	}
	l.cloneGuardian()
	return l
}
