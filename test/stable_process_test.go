package test

import (
	"flag"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// stableSoak is how long TestStableReplicasKilledInTurnKillNoToken kills
// replicas: short in the suite, minutes when asked for
// (go test -race ./test -run TestStableReplicasKilledInTurn -stable-soak=5m: the
// package before the flag, which go test does not know).
var stableSoak = flag.Duration("stable-soak", 12*time.Second, "how long TestStableReplicasKilledInTurnKillNoToken kills replicas")

// TestStableReplicasKilledInTurnKillNoToken: three `wxtoken serve`
// processes on a stable_token app, one SIGKILLed and started again every
// two seconds for -stable-soak, through rotations. A restart, a standby
// taking over and a new leader only ever call normal mode, so no refresh
// is forced and the token a service holds always works.
func TestStableReplicasKilledInTurnKillNoToken(t *testing.T) {
	soak := *stableSoak
	const lifetime = 8 * time.Second
	ctx := testenv.Context(t, soak+60*time.Second)
	srv := testenv.NATS(t)
	// 2 h and its last 5 min, scaled down to 8 s and 4 s; replaced 2 s
	// before expiry, 2.4 s with the spread, and up to a second more by the
	// second fetched_at is cut by: inside the 4 s.
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: lifetime, StableRenewBefore: 4 * time.Second})
	fake.AddApp(appA, "secret-of-a")
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA,
		"WECHAT_APPSECRET=secret-of-a", "WECHAT_TOKEN_API=stable", "WXTOKEN_REFRESH_BEFORE=2s",
		"WXTOKEN_LEASE_TTL=1s", "WXTOKEN_UPSTREAM_TIMEOUT=400ms", "WXTOKEN_SCHEDULE=@every 1s"}
	nc := testenv.Connect(t, srv.ClientURL())

	replicas := make([]*process, 3)
	start := func(i, generation int) {
		name := fmt.Sprintf("r%d-%d", i, generation)
		replicas[i] = startWxtoken(t, name, env, "serve", "--instance", name)
	}
	for i := range replicas {
		start(i, 0)
	}
	sub := newSubscriber(t, ctx, nc)
	kills := time.NewTicker(2 * time.Second)
	defer kills.Stop()
	checks := time.NewTicker(250 * time.Millisecond)
	defer checks.Stop()
	deadline := time.After(soak)
	samples, dead, killed := 0, 0, 0
	for running := true; running; {
		select {
		case <-kills.C:
			i := killed % len(replicas)
			replicas[i].cmd.Process.Signal(syscall.SIGKILL)
			replicas[i].wait(t, ctx)
			killed++
			start(i, killed)
		case <-checks.C:
			samples++
			if tok := sub.Token(); !valid(fake, tok.Value) {
				dead++
				_, code := fake.Valid(tok.Value)
				t.Errorf("sample %d: the token the service holds (revision %d) does not work: errcode %d", samples, tok.Revision, code)
			}
		case <-deadline:
			running = false
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	issued := fake.Issued(appA)
	t.Logf("%d kills, %d tokens issued, %d upstream calls, %d samples, %d dead", killed, issued, fake.Calls(appA), samples, dead)
	if fake.Forced(appA) != 0 {
		t.Errorf("%d forced refreshes: replicas restarting must never force one", fake.Forced(appA))
	}
	// Each token is replaced before it expires: one more per lifetime.
	if minimum := int(soak/lifetime) + 1; issued < minimum {
		t.Errorf("%d tokens issued in %s, want at least %d: rotations did not go on", issued, soak, minimum)
	}
}

func valid(fake *fakewechat.Server, token string) bool {
	ok, _ := fake.Valid(token)
	return ok
}
