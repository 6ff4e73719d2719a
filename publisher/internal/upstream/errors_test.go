package upstream

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestUntilQuotaReset(t *testing.T) {
	for _, tc := range []struct{ now, reset string }{
		{"2026-11-21T10:00:00Z", "2026-11-21T16:00:00Z"}, // 18:00 in China: midnight is 6h on
		{"2026-11-21T15:59:59Z", "2026-11-21T16:00:00Z"},
		{"2026-11-21T16:00:00Z", "2026-11-22T16:00:00Z"}, // exactly midnight: the next one
		{"2026-12-31T20:00:00Z", "2027-01-01T16:00:00Z"},
	} {
		now, _ := time.Parse(time.RFC3339, tc.now)
		reset, _ := time.Parse(time.RFC3339, tc.reset)
		if got := now.Add(UntilQuotaReset(now)); !got.Equal(reset) {
			t.Errorf("reset after %s = %s, want %s", tc.now, got.UTC(), tc.reset)
		}
	}
}

func TestSecretFixNamesTheCommandFor40125And40243Only(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&Error{ErrCode: 40125, Class: ClassConfig}, "reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set wx1234567890abcdef`"},
		{fmt.Errorf("wrapped: %w", &Error{ErrCode: 40243, Class: ClassConfig}), "unfreeze it in WeChat's console (it takes about 10 minutes), or reset it there and give the new one with `wxtoken secret set wx1234567890abcdef`"},
		{&Error{ErrCode: 40164, Class: ClassConfig}, ""},
		{errors.New("no answer"), ""},
	} {
		if got := SecretFix(tc.err, "wx1234567890abcdef"); got != tc.want {
			t.Errorf("SecretFix(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
