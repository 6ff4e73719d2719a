package kv_test

import (
	"strings"
	"testing"

	"github.com/wxtoken/wxtoken/kv"
)

// TestValidateID: an appid, corpid or agent is a key's characters without
// the "-" that joins a WeCom key's corpid and agent.
func TestValidateID(t *testing.T) {
	for _, ok := range []string{"wx1234567890abcdef", "ww1234567890abcdef", "1000002", "contacts", "A_b"} {
		if err := kv.ValidateID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, says := range map[string]string{
		"ww1-1000002":           `has a "-"`,
		"":                      "empty",
		"wx.jsapi_ticket":       "is not one of",
		strings.Repeat("a", 65): "more than 64",
	} {
		if err := kv.ValidateID(bad); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: %v, want an error saying %q", bad, err, says)
		}
	}
}
