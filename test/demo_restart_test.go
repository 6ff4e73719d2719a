package test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestDemoRestartKeepsItsTokens: `serve --demo` SIGKILLed and started
// again on its data directory, while the tokens it stored are valid,
// fetches none (its fake WeChat, which died with it, knows them again), and
// says nothing of another party: the old fake's tokens are not dead to the
// new one. The restarted demo's quota/get, asked with the held token, is
// what would have found it "dead" otherwise.
func TestDemoRestartKeepsItsTokens(t *testing.T) {
	ctx := testenv.Context(t, 40*time.Second)
	natsListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	wechatListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dataDir := t.TempDir()
	args := []string{"serve", "--demo", "--data-dir", dataDir, "--nats-listen", natsListen, "--demo-wechat-listen", wechatListen,
		"--demo-agent-listen", "off", "--http-addr", "127.0.0.1:0", "--lease-ttl", "2s", "--upstream-timeout", "1s", "--quota-every", "500ms"}
	first := startWxtoken(t, "first demo", nil, args...)
	first.waitOutput(t, ctx, `msg="token rotated" appid=`+demoApp+` `)
	first.waitOutput(t, ctx, `msg="token rotated" appid=wxdemostable012345 `)
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.wait(t, ctx)

	second := startWxtoken(t, "second demo", nil, args...)
	second.waitOutput(t, ctx, `msg="demo: the fake WeChat knows again the tokens of the demo's last run that the bucket holds, as WeChat would" apps=`+demoApp+",wxdemostable012345")
	second.waitOutput(t, ctx, `msg="became leader"`)
	led := time.Now()
	// The new leader's first quota/get of each app, asked with the token
	// the first demo stored (60 s tokens, rotated 30 s before expiry: not
	// due yet).
	ledgers := testenv.Entries(t, testenv.Bucket(t, ctx, testenv.Connect(t, "nats://"+natsListen)), "*."+kv.KindLedger)
	read := map[string]bool{}
	for len(read) < 2 {
		e := testenv.Next(t, ctx, ledgers)
		appid, _ := kv.SplitKey(e.Key())
		l, err := kv.DecodeLedger(appid, e.Value())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Quota {
			if r.At.After(led) {
				read[appid] = true
			}
		}
	}
	out := second.output.String()
	for _, wrong := range []string{"level=ERROR", "quota/get refused the app's token held", `msg="token rotated"`} {
		if strings.Contains(out, wrong) {
			t.Errorf("the restarted demo logged %q with its last run's tokens still valid:\n%s", wrong, out)
		}
	}
}
