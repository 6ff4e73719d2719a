package kv

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// ForceBudgetKind is the kind of the key "<appid>.force_budget", where the
// refresher counts the forced stable_token refreshes of an app: WeChat
// allows 20 a China day, at least 30 s apart, and the count must outlive a
// failover. Readers of tokens ignore it; it holds no secret.
const ForceBudgetKind = "force_budget"

// ForceBudgetKey is the key of appid's force budget.
func ForceBudgetKey(appid string) string { return appid + "." + ForceBudgetKind }

// ForceBudget is the value of a force budget key.
type ForceBudget struct {
	AppID string `json:"appid"`
	// Day is the China-time (UTC+8) date Used counts for, as 2006-01-02:
	// WeChat's day, which starts at 00:00 China time.
	Day  string `json:"day"`
	Used int    `json:"used"`
	// Last is when the last forced refresh was asked of WeChat.
	Last time.Time `json:"last"`
}

var dayPattern = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)

// Validate checks the budget against the contract.
func (b ForceBudget) Validate() error {
	if err := ValidateAppID(b.AppID); err != nil {
		return fmt.Errorf("%w: force budget: %w", ErrInvalidRecord, err)
	}
	if _, err := time.Parse(time.DateOnly, b.Day); err != nil || !dayPattern.MatchString(b.Day) {
		return fmt.Errorf("%w: force budget: day %.20q is not a date such as 2006-01-02", ErrInvalidRecord, b.Day)
	}
	if b.Used < 0 {
		return fmt.Errorf("%w: force budget: used %d is negative", ErrInvalidRecord, b.Used)
	}
	return nil
}

// EncodeForceBudget validates b and returns its JSON.
func EncodeForceBudget(b ForceBudget) ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	b.Last = b.Last.UTC()
	return json.Marshal(b)
}

// DecodeForceBudgetFor decodes the force budget read under appid's force
// budget key and checks that it names appid.
func DecodeForceBudgetFor(appid string, data []byte) (ForceBudget, error) {
	if len(data) > MaxRecordSize {
		return ForceBudget{}, fmt.Errorf("%w: force budget of %d bytes", ErrInvalidRecord, len(data))
	}
	var b ForceBudget
	if err := json.Unmarshal(data, &b); err != nil {
		return ForceBudget{}, fmt.Errorf("%w: force budget: %w", ErrInvalidRecord, err)
	}
	if err := b.Validate(); err != nil {
		return ForceBudget{}, err
	}
	if b.AppID != appid {
		return ForceBudget{}, fmt.Errorf("%w: force budget names appid %q, stored under %q", ErrInvalidRecord, b.AppID, appid)
	}
	return b, nil
}
