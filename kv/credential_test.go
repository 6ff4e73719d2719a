package kv

import (
	"errors"
	"testing"
	"time"
)

func TestTicketRecordRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := NewCredential("wx1234567890abcdef.jsapi_ticket", "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg", 7200*time.Second, at)
	data, err := EncodeCredential(c)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"appid":"wx1234567890abcdef","kind":"jsapi_ticket","ticket":"sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg","expires_in":7200,"fetched_at":"2026-12-01T10:00:00Z","expires_at":"2026-12-01T12:00:00Z"}`
	if string(data) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", data, want)
	}
	got, err := DecodeCredential(c.Key, data)
	if err != nil || got != c {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, c)
	}
	// A token reader of the ticket's key, or a ticket under a token's
	// key, is refused: a record under the wrong key is garbage.
	if _, err := DecodeCredential("wx1234567890abcdef", data); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("ticket under the token key: %v", err)
	}
	if _, err := DecodeCredential("wx1234567890abcdef.wx_card_ticket", data); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("jsapi ticket under the wx_card key: %v", err)
	}
}

func TestTokenCredentialIsTodaysRecord(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := NewCredential("wx1234567890abcdef", "TOKEN", 7200*time.Second, at)
	data, err := EncodeCredential(c)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecordFor("wx1234567890abcdef", data)
	if err != nil || r.AccessToken != "TOKEN" || !r.ExpiresAt.Equal(c.ExpiresAt) {
		t.Fatalf("a token credential read as today's record: %+v, %v", r, err)
	}
}

func TestValidateKey(t *testing.T) {
	for key, ok := range map[string]bool{
		"wx1234567890abcdef":                true,
		"wx1234567890abcdef.jsapi_ticket":   true,
		"wx1234567890abcdef.wx_card_ticket": true,
		"wx1234567890abcdef.force_budget":   false,
		"wx1234567890abcdef.":               false,
		".jsapi_ticket":                     false,
		"wx1.jsapi_ticket.x":                false,
		"wx 1":                              false,
	} {
		if err := ValidateKey(key); (err == nil) != ok {
			t.Errorf("ValidateKey(%q) = %v", key, err)
		}
	}
}

func TestTicketRecordRefusesWhatIsNotOne(t *testing.T) {
	for name, data := range map[string]string{
		"no ticket":    `{"appid":"wx1","kind":"jsapi_ticket","expires_in":7200,"fetched_at":"2026-12-01T10:00:00Z","expires_at":"2026-12-01T12:00:00Z"}`,
		"unknown kind": `{"appid":"wx1","kind":"other","ticket":"T","expires_in":7200,"fetched_at":"2026-12-01T10:00:00Z","expires_at":"2026-12-01T12:00:00Z"}`,
		"backwards":    `{"appid":"wx1","kind":"jsapi_ticket","ticket":"T","expires_in":7200,"fetched_at":"2026-12-01T12:00:00Z","expires_at":"2026-12-01T10:00:00Z"}`,
		"garbage":      `{`,
	} {
		if _, err := decodeTicket([]byte(data)); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
