package kv_test

import (
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

var eventAt = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// TestAuthorizerState: the state a record is in, as `wxtoken authorizers
// list` and the record's String name it.
func TestAuthorizerState(t *testing.T) {
	for want, a := range map[string]kv.Authorizer{
		"active":                 {RefreshToken: "r", Code: "c"},
		"awaiting code exchange": {Code: "c"},
		"unauthorized":           {Unauthorized: true},
		"no refresh token":       {},
	} {
		if got := a.State(); got != want {
			t.Errorf("%+v: state %q, want %q", a, got, want)
		}
	}
}

// TestRefreshTokenMerge: the newest issued refresh token wins, and an
// authorization code not yet exchanged stays unless it is the one spent.
func TestRefreshTokenMerge(t *testing.T) {
	held := kv.Authorizer{RefreshToken: "old", IssuedAt: eventAt, Code: "code", CodeExpiresAt: eventAt.Add(time.Hour), EventTime: eventAt}
	for _, tc := range []struct {
		name      string
		issued    time.Time
		spent     string
		write     bool
		wantToken string
		wantCode  string
	}{
		{"newer", eventAt.Add(time.Minute), "", true, "new", "code"},
		{"newer, the code spent", eventAt.Add(time.Minute), "code", true, "new", ""},
		{"newer, another code spent", eventAt.Add(time.Minute), "other", true, "new", "code"},
		{"the same second", eventAt, "", true, "new", "code"},
		{"older", eventAt.Add(-time.Minute), "code", false, "old", "code"},
	} {
		got, write := held.WithRefreshToken("new", tc.issued, tc.spent)
		if write != tc.write || got.RefreshToken != tc.wantToken || got.Code != tc.wantCode || !got.EventTime.Equal(eventAt) {
			t.Errorf("%s: %v %+v, want write %v, token %q, code %q, the event time kept", tc.name, write, got, tc.write, tc.wantToken, tc.wantCode)
		}
	}
	if got, write := (kv.Authorizer{}).WithRefreshToken("first", eventAt, ""); !write || got.RefreshToken != "first" || !got.IssuedAt.Equal(eventAt) {
		t.Errorf("into no record: %v %+v", write, got)
	}
}

// TestAuthorizationEventMerge: the newest event wins; of two events of one
// second, the one not in yet goes in, but a withdrawal stays.
func TestAuthorizationEventMerge(t *testing.T) {
	active := kv.Authorizer{RefreshToken: "r", IssuedAt: eventAt, Code: "code", CodeExpiresAt: eventAt.Add(time.Hour), EventTime: eventAt}
	withdrawn := kv.Authorizer{Unauthorized: true, EventTime: eventAt}

	if got, write := active.Authorized(eventAt.Add(time.Second), "code2", time.Time{}); !write || got.Code != "code2" ||
		!got.CodeExpiresAt.Equal(eventAt.Add(time.Second+time.Hour)) || got.RefreshToken != "r" {
		t.Errorf("a newer event with no expiry: %v %+v, want its code for an hour, the refresh token kept", write, got)
	}
	if _, write := active.Authorized(eventAt.Add(-time.Second), "code2", time.Time{}); write {
		t.Error("an older event went in")
	}
	if _, write := active.Authorized(eventAt, "code", time.Time{}); write {
		t.Error("the event in, pushed again, went in again")
	}
	if got, write := active.Authorized(eventAt, "code2", eventAt.Add(10*time.Minute)); !write || got.Code != "code2" || !got.CodeExpiresAt.Equal(eventAt.Add(10*time.Minute)) {
		t.Errorf("another event of the same second: %v %+v, want it in", write, got)
	}
	if _, write := withdrawn.Authorized(eventAt, "code2", time.Time{}); write {
		t.Error("an authorization of the withdrawal's second replaced it")
	}
	if got, write := withdrawn.Authorized(eventAt.Add(time.Second), "code2", time.Time{}); !write || got.Unauthorized || got.Code != "code2" {
		t.Errorf("authorized again: %v %+v", write, got)
	}
	if _, write := (kv.Authorizer{}).Authorized(eventAt, "", time.Time{}); write {
		t.Error("an event with no code made a record with nothing to fetch with")
	}

	if got, write := active.Withdrawn(eventAt); !write || !got.Unauthorized || got.RefreshToken != "" || got.Code != "" || !got.EventTime.Equal(eventAt) {
		t.Errorf("withdrawn in the same second: %v %+v, want a withdrawal that keeps nothing", write, got)
	}
	if _, write := withdrawn.Withdrawn(eventAt); write {
		t.Error("a withdrawal pushed again went in again")
	}
	if _, write := active.Withdrawn(eventAt.Add(-time.Second)); write {
		t.Error("an older withdrawal went in")
	}
}
