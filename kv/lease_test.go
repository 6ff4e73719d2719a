package kv_test

import (
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// TestLeaseHolderCodec: the lease value round-trips, its JSON is the
// contract's, and what is no JSON is refused.
func TestLeaseHolderCodec(t *testing.T) {
	h := kv.LeaseHolder{Instance: "host-1", Term: "0123456789abcdef", Since: time.Date(2026, 11, 21, 18, 0, 0, 0, time.FixedZone("UTC+8", 8*3600))}
	data := kv.EncodeLeaseHolder(h)
	if want := `{"instance":"host-1","term":"0123456789abcdef","since":"2026-11-21T10:00:00Z"}`; string(data) != want {
		t.Errorf("encoded %s, want %s", data, want)
	}
	back, err := kv.DecodeLeaseHolder(data)
	if err != nil || back.Instance != h.Instance || back.Term != h.Term || !back.Since.Equal(h.Since) {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	if _, err := kv.DecodeLeaseHolder([]byte("leader")); err == nil {
		t.Error("a lease value that is no JSON was decoded")
	}
}
