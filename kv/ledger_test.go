package kv

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLedgerCountsByChinaDayAndMonth(t *testing.T) {
	var l Ledger
	l.AppID = "wx1234567890abcdef"
	// 15:59 UTC on the 30th is 23:59 in China; a minute later it is the
	// 1st of December there.
	night := time.Date(2026, 11, 30, 15, 59, 0, 0, time.UTC)
	l.Count("token", night, true)
	l.Count("jsapi_ticket", night, false)
	if l.Day != "2026-11-30" || l.Month != "2026-11" || l.Calls["token"] != 1 || l.MonthCalls["jsapi_ticket"] != 1 {
		t.Fatalf("before China midnight: %+v", l)
	}
	l.Count("token", night.Add(time.Minute), true)
	if l.Day != "2026-12-01" || l.Month != "2026-12" || l.Calls["token"] != 1 || l.Calls["jsapi_ticket"] != 0 || l.MonthCalls["token"] != 1 {
		t.Fatalf("after China midnight the day and the month start again: %+v", l)
	}
	if !l.Since.Equal(night) || !l.LastEnding.Equal(night.Add(time.Minute)) || l.LastEndingCalls != 1 {
		t.Fatalf("since %s, last ending %s (%d in its second)", l.Since, l.LastEnding, l.LastEndingCalls)
	}
	l.Count("token", night.Add(30*time.Second), true) // a call of yesterday, counted late
	if l.Day != "2026-12-01" || l.Calls["token"] != 1 || l.MonthCalls["token"] != 1 || !l.LastEnding.Equal(night.Add(time.Minute)) {
		t.Fatalf("a late count of yesterday's call changed today's: %+v", l)
	}
	data, err := EncodeLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeLedger(l.AppID, data)
	if err != nil || back.Calls["token"] != 1 || !back.LastEnding.Equal(l.LastEnding) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	if _, err := DecodeLedger("wxffffffffffffffff", data); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("a ledger under another app's key: %v", err)
	}
	for name, bad := range map[string]string{
		"no day":        `{"appid":"wx1234567890abcdef","month":"2026-12"}`,
		"bad api":       `{"appid":"wx1234567890abcdef","day":"2026-12-01","month":"2026-12","calls":{"A B":1}}`,
		"negative":      `{"appid":"wx1234567890abcdef","day":"2026-12-01","month":"2026-12","calls":{"token":-1}}`,
		"not an object": `[]`,
	} {
		if _, err := DecodeLedger("wx1234567890abcdef", []byte(bad)); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestLedgerOurs: whose doing a dead token was, by fetched_at (whole
// seconds) against the ledger's calls that end a token.
func TestLedgerOurs(t *testing.T) {
	base := time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return base.Add(d) }
	ledger := func(calls ...time.Time) Ledger {
		l := Ledger{AppID: "wx1234567890abcdef"}
		l.Count("stable_token", at(0), false)
		for _, c := range calls {
			l.Count("token", c, true)
		}
		return l
	}
	for _, tc := range []struct {
		name    string
		l       Ledger
		fetched time.Time
		ours    bool
	}{
		{"no ledger: cannot tell", Ledger{}, at(time.Hour), true},
		{"fetched before the ledger began", ledger(), at(-time.Second), true},
		{"its own fetch only", ledger(at(10*time.Second + 300*time.Millisecond)), at(10 * time.Second), false},
		{"nothing that ends since", ledger(at(5 * time.Second)), at(10 * time.Second), false},
		{"a later fetch", ledger(at(10*time.Second+300*time.Millisecond), at(11*time.Second)), at(10 * time.Second), true},
		{"a second fetch in its second", ledger(at(10*time.Second+100*time.Millisecond), at(10*time.Second+700*time.Millisecond)), at(10 * time.Second), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.l.Ours(tc.fetched); got != tc.ours {
				t.Errorf("Ours = %v, want %v (ledger %+v)", got, tc.ours, tc.l)
			}
		})
	}
}

func TestLedgerKeepsTheGuardiansPartAndChecksItsPaths(t *testing.T) {
	at := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	l := Ledger{AppID: "wx1234567890abcdef"}
	l.Count("token", at, true)
	l.Quota = map[string]QuotaReading{"/cgi-bin/token": {At: at, DailyLimit: 2000, Used: 7, Remain: 1993, Ours: 5, Others: 2, RateLimit: &RateLimit{CallCount: 100, RefreshSecond: 60}}}
	l.Foreign = &ForeignFetch{At: at, Path: "/cgi-bin/token", Others: 2, Count: 1}
	l.Rescue = &Rescue{At: at, Path: "/cgi-bin/token", API: "clear_quota", Outcome: "rescued", Count: 1}
	data, err := EncodeLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeLedger(l.AppID, data)
	if err != nil || back.Quota["/cgi-bin/token"].Others != 2 || back.Quota["/cgi-bin/token"].RateLimit.CallCount != 100 ||
		back.Foreign.Count != 1 || back.Rescue.API != "clear_quota" {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	c := back.Clone()
	c.Quota["/cgi-bin/token"].RateLimit.CallCount = 1
	c.Foreign.Count, c.Rescue.Count = 9, 9
	if back.Quota["/cgi-bin/token"].RateLimit.CallCount != 100 || back.Foreign.Count != 1 || back.Rescue.Count != 1 {
		t.Errorf("a clone shares the guardian's part with its original: %+v", back)
	}
	l.Quota["cgi-bin/token"] = QuotaReading{}
	if _, err := EncodeLedger(l); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("a quota reading of a path without a leading /: %v", err)
	}
}

func TestALedgerTooLargeForTheBucketIsRefused(t *testing.T) {
	l := Ledger{AppID: "wx1234567890abcdef", Quota: map[string]QuotaReading{}}
	l.Count("token", time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC), true)
	for i := 0; len(l.Quota) < 200; i++ {
		l.Quota["/cgi-bin/a/rather/long/api/path/"+strings.Repeat("x", 40)+strconv.Itoa(i)] = QuotaReading{DailyLimit: 100000}
	}
	if _, err := EncodeLedger(l); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("a ledger over MaxRecordSize encoded: %v", err)
	}
}

// TestCallsAtTheEndOfTheDayMayBeWeChatsNextDays: a call counted in the
// last seconds before China midnight may reach WeChat after it; the
// ledger says so for the next day, whether or not a call was counted on
// it yet, and no longer the day after.
func TestCallsAtTheEndOfTheDayMayBeWeChatsNextDays(t *testing.T) {
	midnight := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC) // 00:00 on the 8th in China
	l := Ledger{AppID: "wx1234567890abcdef"}
	l.Count("token", midnight.Add(-time.Minute), true)   // not late
	l.Count("token", midnight.Add(-5*time.Second), true) // late
	if got := l.Straddled("2026-12-08")["token"]; got != 1 {
		t.Errorf("before any call of the 8th: %d of the 7th's calls may be WeChat's 8th's, want 1", got)
	}
	if got := l.Straddled("2026-12-07")["token"]; got != 0 {
		t.Errorf("the 7th's own late calls straddle into the 7th: %d", got)
	}
	l.Count("token", midnight.Add(time.Hour), true)
	if got := l.Straddled("2026-12-08")["token"]; got != 1 || l.Calls["token"] != 1 {
		t.Errorf("after a call of the 8th: straddled %d, the 8th's calls %d; want 1 and 1", got, l.Calls["token"])
	}
	data, err := EncodeLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := DecodeLedger(l.AppID, data); err != nil || back.Straddled("2026-12-08")["token"] != 1 {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	l.Count("token", midnight.Add(25*time.Hour), true)
	if got := l.Straddled("2026-12-09")["token"]; got != 0 {
		t.Errorf("the 7th's late calls still straddle into the 9th: %d", got)
	}
}
