package standby

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

func TestJudgeTellsWhatEachAnswerMeansAndTheFix(t *testing.T) {
	const appid = "wx0123456789abcdef"
	config := func(code int, msg string) error {
		return &upstream.Error{ErrCode: code, ErrMsg: msg, Class: upstream.ClassConfig}
	}
	for _, tc := range []struct {
		name    string
		err     error
		decided bool
		ok      bool
		addr    string
		fix     string
	}{
		{"accepted", nil, true, true, "", ""},
		{"IPv4 not whitelisted", config(40164, "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 6571f2a1-1"),
			true, false, "203.0.113.7", "add 203.0.113.7 to the IP whitelist of " + appid},
		{"IPv6 not whitelisted", config(40164, "invalid ip 2001:db8::7, not in whitelist rid: 1"),
			true, false, "2001:db8::7", "add 2001:db8::7 to the IP whitelist of " + appid},
		{"an errmsg without the address", config(40164, "not in whitelist"),
			true, false, "", "add this host's outgoing address"},
		{"awaiting the administrator", config(89503, "此IP调用需要管理员确认,请联系管理员 rid: 1"),
			true, false, "", "an administrator of " + appid + " must confirm"},
		{"awaiting the administrator, 89501", config(89501, ""), true, false, "", "an administrator of " + appid + " must confirm"},
		{"wrong secret", config(40125, "invalid appsecret"), true, false, "", "the AppSecret of " + appid + " is wrong or was reset: reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set " + appid + "` (or put it in the apps file and reload with SIGHUP)"},
		{"wrong secret, 40001", config(40001, "invalid credential"), true, false, "", "the AppSecret of " + appid + " is wrong or was reset: reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set " + appid + "` (or put it in the apps file and reload with SIGHUP)"},
		{"wrong appid", config(40013, "invalid appid"), true, false, "", "WeChat does not know the appid " + appid},
		{"frozen", config(40243, "AppSecret已被冻结"), true, false, "", "the AppSecret of " + appid + " is frozen: unfreeze it in WeChat's console (it takes about 10 minutes), or reset it there and give the new one with `wxtoken secret set " + appid + "` (or put it in the apps file and reload with SIGHUP)"},
		{"WeChat busy", &upstream.Error{ErrCode: -1, Class: upstream.ClassRetry}, false, false, "", ""},
		{"quota spent", &upstream.Error{ErrCode: 45009, Class: upstream.ClassQuota}, false, false, "", ""},
		{"network error", &upstream.Error{Class: upstream.ClassRetry, ErrMsg: "request failed: connection refused"}, false, false, "", ""},
		{"not WeChat's answer", errors.New("boom"), false, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, decided := Judge(appid, tc.err, time.Unix(1, 0))
			if decided != tc.decided {
				t.Fatalf("decided %v, want %v", decided, tc.decided)
			}
			if !decided {
				return
			}
			if v.OK != tc.ok || v.Address != tc.addr || !strings.Contains(v.Fix, tc.fix) {
				t.Errorf("verdict %+v, want ok %v, address %q, a fix saying %q", v, tc.ok, tc.addr, tc.fix)
			}
			if !tc.ok && v.ErrCode == 0 {
				t.Error("a refusal without its errcode")
			}
		})
	}
}

func TestTableChangesOncePerChangeOfState(t *testing.T) {
	const appid = "wx0123456789abcdef"
	var table Table
	refused := func(addr string) Verdict { return Verdict{ErrCode: 40164, Address: addr} }
	steps := []struct {
		v       Verdict
		changed bool
	}{
		{refused("203.0.113.7"), true},  // the first verdict
		{refused("203.0.113.7"), false}, // the same refusal, probed again
		{refused("203.0.113.7"), false},
		{refused("203.0.113.8"), true}, // another address refused
		{Verdict{ErrCode: 40243}, true},
		{Verdict{OK: true}, true},
		{Verdict{OK: true}, false},
	}
	for i, s := range steps {
		if _, _, changed := table.Record(appid, s.v); changed != s.changed {
			t.Errorf("step %d (%+v): changed %v, want %v", i, s.v, changed, s.changed)
		}
	}
	if probed, cannot := table.Summary([]string{appid}); probed != 1 || len(cannot) != 0 {
		t.Errorf("summary: %d probed, cannot lead %v; want 1 and none", probed, cannot)
	}
	table.Record("wxother0000000000a", refused("203.0.113.7"))
	if forgotten := table.Keep([]string{appid}); len(forgotten) != 1 || forgotten[0] != "wxother0000000000a" {
		t.Errorf("Keep forgot %v, want the app removed", forgotten)
	}
}
