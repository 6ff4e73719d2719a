package publisher

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/wxtoken/wxtoken/kv"
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
