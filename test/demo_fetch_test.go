package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestDemoFetchIsSeenAsAnotherParty follows the README's demo of another
// party: `wxtoken demo fetch` fetches the demo app's token from the
// demo's fake WeChat with its AppSecret; serve's quota poller counts a
// call it did not make and says so at ERROR, the token is rotated at once,
// and `wxtoken status --quota` lists the foreign call. Neither the command
// nor serve prints the demo's AppSecret.
func TestDemoFetchIsSeenAsAnotherParty(t *testing.T) {
	ctx := testenv.Context(t, 40*time.Second)
	natsListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	wechatListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// --quota-every and --upstream-timeout short, so that the test takes
	// seconds: the demo's own --quota-every is TestServeDemo's.
	p := startWxtoken(t, "demo", nil, "serve", "--demo", "--nats-listen", natsListen, "--demo-wechat-listen", wechatListen,
		"--demo-agent-listen", "off", "--http-addr", "127.0.0.1:0", "--quota-every", "500ms", "--upstream-timeout", "1s")
	p.waitOutput(t, ctx, `msg="became leader"`)
	b := testenv.Bucket(t, ctx, testenv.Connect(t, "nats://"+natsListen))

	// A ledger begun a moment ago sets the day's baseline (for twice
	// --upstream-timeout): a newcomer reads the README first; the test
	// waits for a reading after that.
	awaitReadingPastBaseline(t, ctx, b, demoApp)

	out, errOut, code := runWxtoken(t, nil, "demo", "fetch", demoApp, "--demo-wechat-listen", wechatListen)
	if code != 0 || !strings.Contains(out, demoApp+": fetched a token from the demo's fake WeChat at /cgi-bin/token with the AppSecret, as another party would") {
		t.Fatalf("demo fetch: exit %d: %s%s", code, out, errOut)
	}
	p.waitOutput(t, ctx, `msg="another party calls WeChat with this app's AppSecret`)
	// The token is replaced at once: the demo's only requested rotation.
	p.waitUntil(t, ctx, "a requested rotation of "+demoApp, func(out string) bool {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, `msg="token rotated" appid=`+demoApp) && strings.Contains(line, "reason=requested") {
				return true
			}
		}
		return false
	})

	status, errOut, code := runWxtoken(t, []string{"NATS_URL=nats://" + natsListen}, "status", "--quota")
	var foreign string
	for _, line := range strings.Split(status, "\n") {
		if strings.HasPrefix(line, demoApp) && strings.Contains(line, " ago (") && strings.Contains(line, "/cgi-bin/token") {
			foreign = line
		}
	}
	if code != 0 || !strings.Contains(status, "calls by another party holding the AppSecret") || foreign == "" {
		t.Errorf("status --quota (exit %d) lists no foreign call of %s:\n%s%s", code, demoApp, status, errOut)
	}
	for what, text := range map[string]string{"demo fetch": out + errOut, "serve": p.output.String()} {
		if strings.Contains(text, "demo-secret-not-a-real-one") {
			t.Errorf("%s printed the demo's AppSecret", what)
		}
	}

	// Not a demo app, or none: what to write instead.
	_, errOut, code = runWxtoken(t, nil, "demo", "fetch", "wx0000000000000000", "--demo-wechat-listen", wechatListen)
	if code != 2 || !strings.Contains(errOut, demoApp) {
		t.Errorf("demo fetch of another app: exit %d, %q; want 2 naming the demo's apps", code, errOut)
	}
}
