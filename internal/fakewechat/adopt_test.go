package fakewechat

import (
	"testing"
	"time"
)

// TestAdoptedTokensWorkAsTheirOwn: a token adopted from an earlier life
// passes getcallbackip's check until its expiry; an adopted stable token
// is what stable_token's normal mode returns; a later fetch replaces an
// adopted token as it would one the fake issued.
func TestAdoptedTokensWorkAsTheirOwn(t *testing.T) {
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	s := New(Config{ExpiresIn: time.Hour, Overlap: time.Minute, Now: func() time.Time { return now }})
	s.AddApp("wxa", "secret-a")
	s.AddApp("wxs", "secret-s")

	if ok, code := s.Valid("earlier-token"); ok || code != 40001 {
		t.Fatalf("a token of an earlier life, not adopted: %v %d; want 40001", ok, code)
	}
	s.Adopt("wxa", "earlier-token", now.Add(30*time.Minute), false)
	if ok, code := s.Valid("earlier-token"); !ok {
		t.Errorf("an adopted token: errcode %d, want valid", code)
	}
	if got := s.Current("wxa"); got != "earlier-token" {
		t.Errorf("current token %q, want the adopted one", got)
	}
	s.Adopt("wxs", "earlier-stable", now.Add(30*time.Minute), true)
	if got := s.Stable("wxs"); got != "earlier-stable" {
		t.Errorf("stable token %q, want the adopted one", got)
	}

	// A fetch replaces it: it works for the overlap, then no more.
	s.Issue("wxa")
	if ok, _ := s.Valid("earlier-token"); !ok {
		t.Error("an adopted token replaced a moment ago stopped working within the overlap")
	}
	now = now.Add(2 * time.Minute)
	if ok, code := s.Valid("earlier-token"); ok || code != 40001 {
		t.Errorf("an adopted token replaced past the overlap: %v %d; want 40001", ok, code)
	}
	now = now.Add(time.Hour)
	s.Adopt("wxs", "expired-stable", now.Add(-time.Second), true)
	if ok, code := s.Valid("expired-stable"); ok || code != 42001 {
		t.Errorf("an adopted token past its expiry: %v %d; want 42001", ok, code)
	}
}
