package test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestSIGHUPProbesAgainAtOnce runs `wxtoken serve` from an address the
// app's whitelist lacks, with probes an hour apart: once the operator adds
// the address and sends SIGHUP, the replica probes again at once and is
// ready within seconds, its metric 1, instead of an hour later.
func TestSIGHUPProbesAgainAtOnce(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")
	fake.SetWhitelist(appA, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}, EveryAPI: true})
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA, "WECHAT_APPSECRET=secret-of-a",
		"WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_PROBE_EVERY=1h", "WXTOKEN_HTTP_ADDR=127.0.0.1:0"}
	const fix = "add 127.0.0.3 to the IP whitelist of " + appA

	moved := startWxtoken(t, "moved", env, "serve", "--instance", "moved", "--wechat-source-addr", "127.0.0.3")
	moved.waitOutput(t, ctx, "this replica cannot lead "+appA+": "+fix)
	ops := moved.opsURL(t, ctx)
	awaitReadyzSaying(t, ctx, ops, "this replica leads, but cannot fetch 1 app(s)", fix)

	fake.SetWhitelist(appA, fakewechat.Whitelist{Allowed: []string{"127.0.0.2", "127.0.0.3"}, EveryAPI: true})
	sent := time.Now()
	if err := moved.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	moved.waitOutput(t, ctx, "this replica can lead "+appA+" again")
	awaitReadyz(t, ctx, ops, 200)
	t.Logf("ready %s after SIGHUP (--probe-every 1h)", time.Since(sent).Round(time.Millisecond))
	if _, metrics := httpGet(t, ops+"/metrics"); !strings.Contains(metrics, `wxtoken_replica_can_lead{appid="`+appA+`"} 1`) {
		t.Error("after the SIGHUP, wxtoken_replica_can_lead is not 1")
	}
}
