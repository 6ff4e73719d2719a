package kv

import (
	"testing"
	"time"
)

// TestRaiseAddsBackWhatARollbackLost: a ledger restored from a snapshot
// gets back the later view's counts of its day and month, its last
// ending call and its records; a later day of its own is kept; another
// app's view changes nothing.
func TestRaiseAddsBackWhatARollbackLost(t *testing.T) {
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	var snap Ledger
	snap.AppID = "wx1234567890abcdef"
	snap.Count("token", at, true)
	high := snap.Clone()
	high.Count("token", at.Add(time.Hour), true)
	high.Count("clear_quota", at.Add(time.Hour), false)
	high.Elsewhere = &Elsewhere{At: at, Count: 2}
	high.Rescue = &Rescue{At: at.Add(time.Hour), Path: "/cgi-bin/token", Outcome: "rescued", Count: 1, Rescued: map[string]string{"/cgi-bin/token": "2026-12-07"}}

	l := snap.Clone()
	l.Raise(high)
	if l.Calls["token"] != 2 || l.MonthCalls["clear_quota"] != 1 || !l.LastEnding.Equal(at.Add(time.Hour)) ||
		l.Elsewhere == nil || l.Elsewhere.Count != 2 || l.Rescue == nil || l.Rescue.Rescued["/cgi-bin/token"] != "2026-12-07" {
		t.Fatalf("raised: %+v", l)
	}
	high.Rescue.Rescued["/cgi-bin/token"] = "changed"
	if l.Rescue.Rescued["/cgi-bin/token"] != "2026-12-07" {
		t.Error("the raised ledger shares its rescue's marks with the view it was raised from")
	}

	later := snap.Clone()
	later.Count("token", at.Add(48*time.Hour), true) // two days on: a day and month of its own
	later.Raise(high)
	if later.Day != "2026-12-09" || later.Calls["token"] != 1 || later.MonthCalls["token"] != 2 || later.MonthCalls["clear_quota"] != 1 {
		t.Errorf("a later day's count was replaced by an earlier day's: %+v", later)
	}

	other := snap.Clone()
	high.AppID = "wxffffffffffffffff"
	other.Raise(high)
	if other.Calls["token"] != 1 {
		t.Errorf("another app's ledger raised this one: %+v", other)
	}
}
