package quotastate

import (
	"slices"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

func TestOfOrdersTheReadingsByPathAndCountsTheMonthsResets(t *testing.T) {
	at := time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)
	foreign := &kv.ForeignFetch{At: at, Path: "/cgi-bin/token", Others: 3, Count: 2}
	rescue := &kv.Rescue{At: at, Path: "/cgi-bin/token", API: "quota_clear", Outcome: "reset", Count: 1}
	l := kv.Ledger{AppID: "wxapp000000000001", Month: "2026-05",
		MonthCalls: map[string]int{kv.ResetPath: 2, "clear_quota": 1, "component_clear_quota_v2": 3, "token": 40},
		Quota: map[string]kv.QuotaReading{
			"/cgi-bin/token":        {At: at, Used: 12, Ours: 9, Others: 3},
			"/cgi-bin/menu/get":     {At: at, Used: 5},
			"/cgi-bin/stable_token": {At: at, Used: 1, Ours: 1},
		},
		Foreign: foreign, Rescue: rescue}

	s := Of(l)

	var paths []string
	for _, r := range s.Readings {
		paths = append(paths, r.Path)
		if r.QuotaReading != l.Quota[r.Path] {
			t.Errorf("reading of %s = %+v, want the ledger's %+v", r.Path, r.QuotaReading, l.Quota[r.Path])
		}
	}
	if want := []string{"/cgi-bin/menu/get", "/cgi-bin/stable_token", "/cgi-bin/token"}; !slices.Equal(paths, want) {
		t.Errorf("paths %v, want %v", paths, want)
	}
	if s.AppID != l.AppID || s.Foreign != foreign || s.Rescue != rescue || s.Month != "2026-05" {
		t.Errorf("state %+v does not carry the ledger's app, foreign fetch, rescue and month", s)
	}
	if s.PathResets != 2 || s.AccountResets != 4 {
		t.Errorf("resets: path %d, account %d; want 2 and 4 (clear_quota 1 + component_clear_quota_v2 3)", s.PathResets, s.AccountResets)
	}
}

func TestOfAnEmptyLedgerHasNoReadings(t *testing.T) {
	s := Of(kv.Ledger{AppID: "wxapp000000000001"})
	if len(s.Readings) != 0 || s.Foreign != nil || s.Rescue != nil || s.PathResets != 0 || s.AccountResets != 0 {
		t.Errorf("state of an empty ledger: %+v", s)
	}
}
