package publisher

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/internal/secretset"
)

// refusedOldSecret resets fileApp's secret at WeChat and has f's replica
// probe the old one, as its scheduled probe would: its verdict is then
// 40125, it cannot lead the app. It returns the new secret.
func refusedOldSecret(t *testing.T, f *keeperFixture) string {
	t.Helper()
	newSecret, err := f.fake.ResetSecret(fileApp)
	if err != nil {
		t.Fatal(err)
	}
	app, _ := f.r.apps.app(fileApp)
	f.r.probes.probe(context.Background(), app, map[string]time.Time{})
	if err := f.r.probes.problem(false); err == nil || !strings.Contains(err.Error(), fileApp+": errcode 40125") {
		t.Fatalf("after a reset, the probe of the old secret: %v; want the app refused with 40125", err)
	}
	if in, why := f.r.answersLogins(); in {
		t.Fatalf("a standby WeChat refuses answers logins: %s", why)
	}
	select { // the state was published: start afresh
	case <-f.r.probes.changed:
	default:
	}
	return newSecret
}

// assertCanLeadAgain checks that f's replica can lead fileApp, by every
// sign: Ready's problem, the published count, the metric, a state
// published at once, and its place in the login queue group.
func assertCanLeadAgain(t *testing.T, f *keeperFixture) {
	t.Helper()
	if in, why := f.r.answersLogins(); !in {
		t.Errorf("the replica stays out of the login queue group: %s", why)
	}
	if err := f.r.probes.problem(false); err != nil {
		t.Errorf("Ready: %v; want no app this replica cannot lead", err)
	}
	if _, _, _, cannot := f.r.probes.state(); cannot != 0 {
		t.Errorf("the published state counts %d apps this replica cannot lead, want 0", cannot)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.r.probes.canLead)
	if got := canLeadOf(t, reg, fileApp); got != 1 {
		t.Errorf("wxtoken_replica_can_lead{appid=%q} = %v, want 1", fileApp, got)
	}
	select {
	case <-f.r.probes.changed:
	default:
		t.Error("the state was not published at once")
	}
	if !f.logs.has("this replica can lead " + fileApp + " again") {
		t.Errorf("no line saying the replica can lead again: %q", f.logs.lines)
	}
}

// TestTakenSecretEndsTheCannotLeadVerdict: a replica whose probe found
// the app's secret reset (40125) takes the new one with `wxtoken secret
// set`; the take's own probe passed, and it is the app's verdict at once,
// not at the next scheduled probe up to an hour later.
func TestTakenSecretEndsTheCannotLeadVerdict(t *testing.T) {
	f := newKeeperFixture(t)
	old, _ := f.r.apps.app(fileApp)
	newSecret := refusedOldSecret(t, f)
	if a := f.r.keeper.Take(context.Background(), fileApp, []byte(newSecret)); a.Outcome != secretset.Taken {
		t.Fatalf("take: %+v", a)
	}
	assertCanLeadAgain(t, f)

	// A scheduled probe that set out with the old secret before the take
	// and is answered after it says nothing of the secret in use.
	f.r.probes.probe(context.Background(), old, map[string]time.Time{})
	if err := f.r.probes.problem(false); err != nil {
		t.Errorf("a probe of the secret replaced overwrote the verdict: %v", err)
	}
}

// TestReloadedSecretEndsTheCannotLeadVerdict: the same, with the new
// secret written to the app's secret file and reloaded: the reload's check
// of it passed, and is the app's verdict at once.
func TestReloadedSecretEndsTheCannotLeadVerdict(t *testing.T) {
	f := newKeeperFixture(t)
	newSecret := refusedOldSecret(t, f)
	if err := os.WriteFile(f.secretFile, []byte(newSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetApps(f.load()); err != nil {
		t.Fatal(err)
	}
	if got := f.running(t, fileApp); got != newSecret {
		t.Fatal("the reloaded secret is not in use")
	}
	assertCanLeadAgain(t, f)
}

// TestReloadProbesEveryAppAgainAtOnce: a replica whose address WeChat
// refused learns that it was whitelisted at the next reload (SIGHUP), not
// at its next probe an hour later.
func TestReloadProbesEveryAppAgainAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	var apps []App
	for i := range 3 {
		appid, secret := fmt.Sprintf("wxreprobe%09d", i), fmt.Sprintf("secret-of-app-%d", i)
		fake.AddApp(appid, secret)
		fake.SetWhitelist(appid, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}})
		apps = append(apps, App{AppID: appid, Secret: NewSecret(secret)})
	}
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	srv := natstest.Server(t, nil)

	r, logs, _ := runReplica(t, ctx, srv, wechat.URL, "moved", "127.0.0.3", apps)
	for _, app := range apps {
		logs.await(t, ctx, "this replica cannot lead "+app.AppID+": add 127.0.0.3 to the IP whitelist", 1)
	}
	logs.await(t, ctx, "became leader", 1)
	if err := r.Ready(); err == nil {
		t.Fatal("Ready of a replica WeChat refuses: nil")
	}

	for _, app := range apps {
		fake.SetWhitelist(app.AppID, fakewechat.Whitelist{Allowed: []string{"127.0.0.2", "127.0.0.3"}})
	}
	if err := r.SetApps(apps); err != nil {
		t.Fatal(err)
	}
	for _, app := range apps {
		logs.await(t, ctx, "this replica can lead "+app.AppID+" again", 1)
	}
	if err := r.Ready(); err != nil {
		t.Errorf("Ready once every app was probed again: %v", err)
	}
}
