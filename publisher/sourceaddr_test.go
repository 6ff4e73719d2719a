package publisher

import (
	"net/http"
	"strings"
	"testing"
)

func TestSourceAddrIsCheckedBeforeAnythingStarts(t *testing.T) {
	apps := []App{{AppID: "wx0123456789abcdef", Secret: NewSecret("s")}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // in the error; "" for none
	}{
		{"an address of this host", Config{SourceAddr: "127.0.0.2"}, ""},
		{"not an address", Config{SourceAddr: "127.0.0"}, "is not an IP address"},
		{"with a port", Config{SourceAddr: "127.0.0.2:80"}, "is not an IP address"},
		{"not this host's", Config{SourceAddr: "192.0.2.1"}, "is not an address of this host"},
		{"with a client of one's own", Config{SourceAddr: "127.0.0.2", HTTPClient: &http.Client{}}, "set the local address in that client's transport"},
		{"probes every negative", Config{ProbeEvery: -1}, "probe-every -1ns is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Apps = apps
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
