package kv

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var fetched = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func validRecord() record {
	return newRecord("wx1234567890abcdef", "TOKEN_value-1", 7200*time.Second, fetched)
}

func TestRecordRoundTrip(t *testing.T) {
	for _, length := range []int{1, 512, 1000, MaxTokenLength} {
		rec := validRecord()
		rec.AccessToken = strings.Repeat("A", length)
		data, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("%d characters: %v", length, err)
		}
		got, err := decodeRecord(data)
		if err != nil {
			t.Fatalf("%d characters: %v", length, err)
		}
		if got.AccessToken != rec.AccessToken || !got.ExpiresAt.Equal(rec.ExpiresAt) || !got.FetchedAt.Equal(rec.FetchedAt) ||
			got.ExpiresIn != rec.ExpiresIn || got.AppID != rec.AppID {
			t.Errorf("%d characters: round trip gave %+v", length, got)
		}
	}
}

func TestRecordWireFormat(t *testing.T) {
	data, err := encodeRecord(validRecord())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"appid":"wx1234567890abcdef","access_token":"TOKEN_value-1","expires_in":7200,` +
		`"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`
	if string(data) != want {
		t.Errorf("encoded\n%s\nwant\n%s", data, want)
	}
}

func TestNewRecordKeepsExpiryNoLaterThanReal(t *testing.T) {
	at := fetched.Add(999 * time.Millisecond)
	rec := newRecord("wx1", "t", 90*time.Second, at)
	if rec.ExpiresAt.After(at.Add(90 * time.Second)) {
		t.Errorf("expires_at %s is after the real expiry %s", rec.ExpiresAt, at.Add(90*time.Second))
	}
	if rec.ExpiresIn != 90 || rec.FetchedAt.Nanosecond() != 0 {
		t.Errorf("record %+v", rec)
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	data := `{"appid":"wx1","access_token":"T","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z",` +
		`"expires_at":"2026-11-21T12:00:00Z","written_by":"a future version","nested":{"a":[1,2]}}`
	if _, err := decodeRecord([]byte(data)); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := map[string]string{
		"empty":            ``,
		"not JSON":         `<html>502 Bad Gateway</html>`,
		"truncated":        `{"appid":"wx1","access_token":"T",`,
		"array":            `[1,2,3]`,
		"no token":         `{"appid":"wx1","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"empty token":      `{"appid":"wx1","access_token":"","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"long token":       `{"appid":"wx1","access_token":"` + strings.Repeat("x", MaxTokenLength+1) + `","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"token with space": `{"appid":"wx1","access_token":"a b","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"zero lifetime":    `{"appid":"wx1","access_token":"T","expires_in":0,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"negative":         `{"appid":"wx1","access_token":"T","expires_in":-5,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"expiry first":     `{"appid":"wx1","access_token":"T","expires_in":7200,"fetched_at":"2026-11-21T12:00:00Z","expires_at":"2026-11-21T10:00:00Z"}`,
		"no times":         `{"appid":"wx1","access_token":"T","expires_in":7200}`,
		"bad appid":        `{"appid":"wx.1","access_token":"T","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"lifetime string":  `{"appid":"wx1","access_token":"T","expires_in":"7200","fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`,
		"huge":             `{"appid":"wx1","pad":"` + strings.Repeat("x", MaxRecordSize) + `"}`,
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := decodeRecord([]byte(data))
			if !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("Decode = %v, want ErrInvalidRecord", err)
			}
			if strings.Contains(err.Error(), "xxxxxxxxxx") {
				t.Errorf("error quotes the input at length: %.200s", err)
			}
		})
	}
}

func TestEncodeRefusesInvalidRecord(t *testing.T) {
	rec := validRecord()
	rec.AccessToken = ""
	if _, err := encodeRecord(rec); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("Encode of an empty token: %v", err)
	}
}

func TestDecodeForChecksTheKey(t *testing.T) {
	data, _ := encodeRecord(validRecord())
	if _, err := decodeRecordFor("wxother", data); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("record under another appid's key: %v", err)
	}
	if _, err := decodeRecordFor("wx1234567890abcdef", data); err != nil {
		t.Error(err)
	}
}

func TestValidateAppID(t *testing.T) {
	for _, ok := range []string{"wx1234567890abcdef", "ww_corp-1", "A"} {
		if err := ValidateAppID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "wx.jsapi_ticket", "wx*", "wx>", "wx 1", "wx/1", strings.Repeat("a", 65), "wx\x00"} {
		if err := ValidateAppID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidateWeChatAppID(t *testing.T) {
	for _, ok := range []string{"wx1234567890abcdef", "wxdemo0123456789ab", "wx0000000000000000"} {
		if err := ValidateWeChatAppID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, says := range map[string]string{
		"wx123456789012345":   "has 17 characters",
		"wx12345678901234567": "has 19 characters",
		"":                    "has 0 characters",
		"ww1234567890abcdef":  `does not start with "wx"`,
		"wx1234567890ABCDEF":  `has 'A' at 12`,
		"wx1234567890abcde-":  `has '-' at 17`,
	} {
		err := ValidateWeChatAppID(bad)
		if err == nil || !strings.Contains(err.Error(), says) || !strings.Contains(err.Error(), `a WeChat appid is 18 characters, "wx" and 16`) {
			t.Errorf("%q: %v, want an error that says %s and gives the rule", bad, err, says)
		}
	}
}
