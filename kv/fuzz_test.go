package kv

import (
	"encoding/json"
	"testing"
)

// FuzzDecode: whatever is in the bucket, the token record decoder returns a valid record or an
// error, never panics, and what it accepts survives a round trip.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"appid":"wx1","access_token":"T","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := decodeRecord(data)
		if err != nil {
			return
		}
		if err := rec.validate(); err != nil {
			t.Fatalf("decodeRecord accepted an invalid record: %v", err)
		}
		again, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("encodeRecord of a decoded record: %v", err)
		}
		back, err := decodeRecord(again)
		if err != nil {
			t.Fatalf("decodeRecord of an encoded record: %v", err)
		}
		if back.AccessToken != rec.AccessToken || back.AppID != rec.AppID || !back.ExpiresAt.Equal(rec.ExpiresAt) {
			t.Fatalf("round trip changed %+v into %+v", rec, back)
		}
	})
}

// FuzzDecodeRefreshRequest: any request body gives a request or
// ErrBadRequest, and an accepted request encodes to one that decodes equal.
func FuzzDecodeRefreshRequest(f *testing.F) {
	f.Add([]byte(`{"stale_revision":42,"reason":"40001"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRefreshRequest(data)
		if err != nil {
			return
		}
		back, err := DecodeRefreshRequest(EncodeRefreshRequest(req))
		if err != nil {
			t.Fatalf("re-decoding %+v: %v", req, err)
		}
		if (back.StaleRevision == nil) != (req.StaleRevision == nil) ||
			(back.StaleRevision != nil && *back.StaleRevision != *req.StaleRevision) {
			t.Fatalf("round trip changed %+v into %+v", req, back)
		}
	})
}

// FuzzCanonicalMatchesEncodingJSON: wherever the fast path accepts an
// input, encoding/json decodes it to the same record.
func FuzzCanonicalMatchesEncodingJSON(f *testing.F) {
	f.Add([]byte(`{"appid":"wx1","access_token":"T","expires_in":7200,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T12:00:00Z","reason":"scheduled"}`))
	f.Add([]byte(`{"appid":"wx1","access_token":"T","expires_in":345,"fetched_at":"2026-11-21T10:00:00Z","expires_at":"2026-11-21T10:05:45Z","reason":"scheduled","api":"stable_token"}`))
	f.Add([]byte(`{"appid":"wx1","access_token":"T","expires_in":-0,"fetched_at":"2026-11-21T10:00:00+08:00","expires_at":"2026-11-21T12:00:00.5Z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeCanonical(data)
		if !ok {
			return
		}
		var slow record
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("fast path accepted what encoding/json refuses (%v): %q", err, data)
		}
		if fast.AppID != slow.AppID || fast.AccessToken != slow.AccessToken || fast.ExpiresIn != slow.ExpiresIn ||
			fast.Reason != slow.Reason || fast.API != slow.API || !fast.FetchedAt.Equal(slow.FetchedAt) || !fast.ExpiresAt.Equal(slow.ExpiresAt) {
			t.Fatalf("fast %+v, encoding/json %+v, for %q", fast, slow, data)
		}
	})
}
