package kv

import "testing"

func TestAccountResetsCountEveryFormOfTheAccountsReset(t *testing.T) {
	l := Ledger{MonthCalls: map[string]int{"quota_clear": 4, "clear_quota": 1, "clear_quota_v2": 2,
		"component_clear_quota": 3, "component_clear_quota_v2": 5, "token": 100}}
	if got := l.AccountResets(); got != 11 {
		t.Errorf("AccountResets %d, want 11 (clear_quota, its v2 and a platform's component forms of both)", got)
	}
	if got := l.PathResets(); got != 4 {
		t.Errorf("PathResets %d, want 4", got)
	}
}
