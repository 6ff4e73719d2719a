package publisher

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/internal/secretset"
)

const (
	fileApp = "wx1111111111111111" // its secret in a secret_file
	envApp  = "wx2222222222222222" // its secret in WX_ENV_SECRET
)

// keeperFixture is a refresher (not running: no fetch happens) of two
// apps read from an apps file, against a fake WeChat.
type keeperFixture struct {
	r          *Refresher
	fake       *fakewechat.Server
	logs       *logLines
	secretFile string
	load       func() []App // reads the apps file again, as SIGHUP does
}

func newKeeperFixture(t *testing.T) *keeperFixture {
	t.Helper()
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(fileApp, "file-secret-1")
	fake.AddApp(envApp, "env-secret-1")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "wx1.secret")
	if err := os.WriteFile(secretFile, []byte("file-secret-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	appsFile := filepath.Join(dir, "apps.yaml")
	yaml := "apps:\n  - appid: " + fileApp + "\n    secret_file: " + secretFile + "\n  - appid: " + envApp + "\n    secret_env: WX_ENV_SECRET\n"
	if err := os.WriteFile(appsFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func() []App {
		apps, err := LoadAppsFile(appsFile, func(string) string { return "env-secret-1" })
		if err != nil {
			t.Fatal(err)
		}
		return apps
	}
	nc, _ := natstest.JetStream(t)
	logs := &logLines{}
	r, err := New(nc, Config{Apps: load(), UpstreamURL: srv.URL, UpstreamTimeout: time.Second, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	return &keeperFixture{r: r, fake: fake, logs: logs, secretFile: secretFile, load: load}
}

func (f *keeperFixture) running(t *testing.T, key string) string {
	t.Helper()
	app, ok := f.r.apps.app(key)
	if !ok {
		t.Fatalf("no app %s", key)
	}
	return app.Secret.Reveal()
}

func (f *keeperFixture) file(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(f.secretFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestTakeProbesThenUsesAndWritesTheSecretFile: a secret WeChat refuses
// changes nothing; the right one is used at once and written to the
// app's secret file, mode 0600.
func TestTakeProbesThenUsesAndWritesTheSecretFile(t *testing.T) {
	f := newKeeperFixture(t)
	ctx := context.Background()
	newSecret, err := f.fake.ResetSecret(fileApp)
	if err != nil {
		t.Fatal(err)
	}
	a := f.r.keeper.Take(ctx, fileApp, []byte("wrong-secret"))
	if a.Outcome != secretset.Refused || a.ErrCode != 40125 {
		t.Fatalf("a wrong secret: %+v, want refused with 40125", a)
	}
	if got := f.running(t, fileApp); got != "file-secret-1" {
		t.Fatalf("a refused secret changed the running one to %q", got)
	}
	if got := f.file(t); got != "file-secret-1\n" {
		t.Fatalf("a refused secret changed the file to %q", got)
	}
	if a := f.r.keeper.Check(ctx, fileApp, []byte(newSecret)); a.Outcome != secretset.Checked {
		t.Fatalf("check of the right secret: %+v", a)
	}
	if f.running(t, fileApp) != "file-secret-1" {
		t.Fatal("a check changed the running secret")
	}
	a = f.r.keeper.Take(ctx, fileApp, []byte(newSecret))
	if a.Outcome != secretset.Taken || !strings.Contains(a.Message, f.secretFile) {
		t.Fatalf("the right secret: %+v, want taken and written to %s", a, f.secretFile)
	}
	if got := f.running(t, fileApp); got != newSecret {
		t.Fatal("the taken secret is not the running one")
	}
	if got := f.file(t); got != newSecret+"\n" {
		t.Fatalf("the secret file holds %q, want the new secret", got)
	}
	if fi, err := os.Stat(f.secretFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the secret file's mode: %v, %v; want 0600", fi.Mode(), err)
	}
	// A reload reads the file just written: nothing changes, nothing is
	// probed.
	calls := f.fake.Calls(fileApp)
	if err := f.r.SetApps(f.load()); err != nil {
		t.Fatal(err)
	}
	if f.running(t, fileApp) != newSecret || f.fake.Calls(fileApp) != calls {
		t.Fatal("a reload after the take changed the secret or probed it again")
	}
	if a := f.r.keeper.Take(ctx, "wx9999999999999999", []byte(newSecret)); a.Outcome != secretset.Unknown {
		t.Fatalf("an unknown app: %+v", a)
	}
}

// TestTakenSecretFromTheEnvironmentIsHeldAndSurvivesAReload: a secret
// whose source is an environment variable is held in memory, with a WARN
// naming the variable, and a reload that reads the old one again keeps it.
func TestTakenSecretFromTheEnvironmentIsHeldAndSurvivesAReload(t *testing.T) {
	f := newKeeperFixture(t)
	newSecret, err := f.fake.ResetSecret(envApp)
	if err != nil {
		t.Fatal(err)
	}
	a := f.r.keeper.Take(context.Background(), envApp, []byte(newSecret))
	if a.Outcome != secretset.Held || !strings.Contains(a.Message, "update WX_ENV_SECRET before the next restart") {
		t.Fatalf("%+v, want held, naming WX_ENV_SECRET", a)
	}
	if !f.logs.has("secret set: held in memory only: update WX_ENV_SECRET before the next restart appid=" + envApp) {
		t.Fatalf("no WARN naming the variable: %q", f.logs.lines)
	}
	if err := f.r.SetApps(f.load()); err != nil { // the environment still says env-secret-1
		t.Fatal(err)
	}
	if got := f.running(t, envApp); got != newSecret {
		t.Fatalf("a reload put back the secret the environment still holds: running %q", got)
	}
	if !f.logs.has("reload: the secret set with `wxtoken secret set` is kept") {
		t.Fatalf("the reload did not say it kept the held secret: %q", f.logs.lines)
	}
}

// TestReloadVerifiesAChangedSecretFile: a secret file rewritten with a
// secret WeChat refuses is not used (ERROR naming the app, the errcode
// and the command); a right one is.
func TestReloadVerifiesAChangedSecretFile(t *testing.T) {
	f := newKeeperFixture(t)
	newSecret, err := f.fake.ResetSecret(fileApp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.secretFile, []byte("a-wrong-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetApps(f.load()); err != nil {
		t.Fatal(err)
	}
	if got := f.running(t, fileApp); got != "file-secret-1" {
		t.Fatalf("a refused secret file was used: running %q", got)
	}
	want := "reload: WeChat refuses the new secret (the AppSecret is invalid); the running secret is kept: reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set " + fileApp + "` appid=" + fileApp + " errcode=40125"
	if !f.logs.has(want) {
		t.Fatalf("no ERROR %q in %q", want, f.logs.lines)
	}
	if err := os.WriteFile(f.secretFile, []byte(newSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetApps(f.load()); err != nil {
		t.Fatal(err)
	}
	if got := f.running(t, fileApp); got != newSecret {
		t.Fatal("the right secret file was not used")
	}
	if strings.Contains(strings.Join(f.logs.lines, "\n"), newSecret) || strings.Contains(strings.Join(f.logs.lines, "\n"), "a-wrong-secret") {
		t.Fatal("a secret reached the logs")
	}
}

// TestTakeProbesEachKindWithItsOwnCall: a WeCom app (its key
// "<corpid>-<agent>") is probed with gettoken, a platform (its component
// appid) with api_start_push_ticket; each refuses its old secret after a
// reset and takes the new one.
func TestTakeProbesEachKindWithItsOwnCall(t *testing.T) {
	const corp, agent, component = "ww1234567890abcdef", "1000002", "wx0123456789abcdef"
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddWeComApp(corp, agent, "corp-secret-1")
	if err := fake.AddPlatform(component, "component-secret-1", "t", testAESKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	nc, _ := natstest.JetStream(t)
	r, err := New(nc, Config{UpstreamURL: srv.URL, WeComURL: srv.URL, UpstreamTimeout: time.Second, Apps: []App{
		{CorpID: corp, Agent: agent, Secret: NewSecret("corp-secret-1")},
		{AppID: component, Secret: NewSecret("component-secret-1"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, old string }{{corp + "-" + agent, "corp-secret-1"}, {component, "component-secret-1"}} {
		newSecret, err := fake.ResetSecret(tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if a := r.keeper.Take(context.Background(), tc.key, []byte(tc.old)); a.Outcome != secretset.Refused || a.ErrCode == 0 {
			t.Errorf("%s: the old secret after a reset: %+v, want WeChat's refusal", tc.key, a)
		}
		if a := r.keeper.Take(context.Background(), tc.key, []byte(newSecret)); !a.Took() {
			t.Errorf("%s: the new secret: %+v, want taken", tc.key, a)
		}
		if app, _ := r.apps.app(tc.key); app.Secret.Reveal() != newSecret {
			t.Errorf("%s: the new secret is not the running one", tc.key)
		}
	}
}

// TestReloadKeepsTheRunningSecretWhenTheNewOneIsFrozen: 40243 is a
// refusal too, and its ERROR says to unfreeze or reset.
func TestReloadKeepsTheRunningSecretWhenTheNewOneIsFrozen(t *testing.T) {
	f := newKeeperFixture(t)
	newSecret, err := f.fake.ResetSecret(fileApp)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.fake.Freeze(fileApp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.secretFile, []byte(newSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.r.SetApps(f.load()); err != nil {
		t.Fatal(err)
	}
	if got := f.running(t, fileApp); got != "file-secret-1" {
		t.Fatal("a frozen secret was used")
	}
	if !f.logs.has("unfreeze it in WeChat's console (it takes about 10 minutes), or reset it there and give the new one with `wxtoken secret set " + fileApp + "` appid=" + fileApp + " errcode=40243") {
		t.Fatalf("no ERROR with 40243 and its fix: %q", f.logs.lines)
	}
}
