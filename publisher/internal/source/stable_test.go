package source

import (
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/loop"
)

// A stable token is replaced in its last 5 minutes, where WeChat issues a
// new one, spread included: earlier calls return the same token.
func TestStableWindowStaysInsideTheRenewal(t *testing.T) {
	for lifetime, want := range map[time.Duration]time.Duration{
		7200 * time.Second: 225 * time.Second,
		345 * time.Second:  172500 * time.Millisecond, // a token fetched with 345 s left
		300 * time.Second:  150 * time.Second,
	} {
		got := loop.Window(&Stable{}, 10*time.Minute, lifetime)
		if got != want {
			t.Errorf("stable window(%s) = %s, want %s", lifetime, got, want)
		}
		if lead := got + got/5; lead >= stableRenewal {
			t.Errorf("stable window(%s) with its spread starts %s before expiry, outside WeChat's %s", lifetime, lead, stableRenewal)
		}
	}
	if got := loop.Window(&Stable{}, 4*time.Second, time.Hour); got != 4*time.Second {
		t.Errorf("a shorter RefreshBefore is kept: got %s", got)
	}
}
