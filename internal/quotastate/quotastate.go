// Package quotastate is one reading of what an app's ledger says of its
// quota, for the two that show it to a person: `wxtoken status` (its
// --quota view and its spent quotas) and the refresher's status page. Both
// read a ledger here, so that they show the same thing the same way.
package quotastate

import (
	"cmp"
	"slices"

	"github.com/wxtoken/wxtoken/kv"
)

// State is an app's quota as its ledger holds it: WeChat's last reading of
// each API path, the last time another party's calls were seen to grow,
// and the last rescue of a spent quota with the resets it spent this
// China month.
type State struct {
	AppID    string
	Readings []Reading // ordered by path
	Foreign  *kv.ForeignFetch
	Rescue   *kv.Rescue
	// Month is the China month (2006-01) the resets were counted in:
	// PathResets of quota/clear (50 a month), AccountResets of the
	// account-wide clear_quota forms (10 a month, with the console's).
	Month         string
	PathResets    int
	AccountResets int
}

// Reading is WeChat's last reading of one API path.
type Reading struct {
	Path string
	kv.QuotaReading
}

// Of reads l's quota state.
func Of(l kv.Ledger) State {
	s := State{AppID: l.AppID, Foreign: l.Foreign, Rescue: l.Rescue, Month: l.Month,
		PathResets: l.PathResets(), AccountResets: l.AccountResets()}
	for path, q := range l.Quota {
		s.Readings = append(s.Readings, Reading{Path: path, QuotaReading: q})
	}
	slices.SortFunc(s.Readings, func(a, b Reading) int { return cmp.Compare(a.Path, b.Path) })
	return s
}
