package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// secretSet runs `wxtoken secret set key` with secret on stdin, as an
// operator would, and returns its output and exit status.
func secretSet(t *testing.T, ctx context.Context, env []string, secret, key string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, wxtokenBinary(t), "secret", "set", key, "--replicas", "2")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	cmd.Stdin = strings.NewReader(secret + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		return out.String(), exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("wxtoken secret set: %v", err)
	}
	return out.String(), 0
}

// TestSecretSetRotatesWithoutARestart runs two replicas, the leader
// reading its secret from a secret_file and the standby from an
// environment variable, and a service following the token. The secret is
// reset at WeChat and the token in use revoked: the service reports it
// rejected, and the refresh fails with 40125, whose ERROR names the
// command. `wxtoken secret set` with a wrong secret is refused and changes
// nothing; with the new one, both replicas take it (the leader writes its
// file, the standby holds it in memory and says what to update), and the
// service's next refresh succeeds. No process restarts. A SIGHUP then
// keeps the standby's held secret, refuses a wrong secret file on the
// leader (ERROR, the running secret still rotates), and takes a right one.
func TestSecretSetRotatesWithoutARestart(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "old-secret")
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "wx_a.secret")
	writeFile(t, secretFile, "old-secret\n")
	fileApps, envApps := filepath.Join(dir, "one.yaml"), filepath.Join(dir, "two.yaml")
	writeFile(t, fileApps, "apps:\n  - appid: "+appA+"\n    secret_file: "+secretFile+"\n")
	writeFile(t, envApps, "apps:\n  - appid: "+appA+"\n    secret_env: SECRET_A\n")
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + wechatURL, "WXTOKEN_LEASE_TTL=2s",
		"WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_MIN_FORCE_INTERVAL=1ms"}
	one := startWxtoken(t, "one", append(env, "WXTOKEN_APPS="+fileApps), "serve", "--instance", "one")
	one.waitOutput(t, ctx, "token rotated")
	two := startWxtoken(t, "two", append(env, "WXTOKEN_APPS="+envApps, "SECRET_A=old-secret"), "serve", "--instance", "two")
	two.waitOutput(t, ctx, "standing by")
	pids := []int{one.cmd.Process.Pid, two.cmd.Process.Pid}

	sub, err := subscriber.New(ctx, nc, appA)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// The service uses its token until WeChat says it is dead, then asks
	// for a new one once and uses that.
	refreshed := func(why string) subscriber.Token {
		t.Helper()
		dead := sub.Token()
		if ok, _ := fake.Valid(dead.Value); ok {
			t.Fatalf("%s: the token to replace still works", why)
		}
		fresh, err := sub.Refresh(ctx, dead.Revision)
		if err != nil {
			t.Fatalf("%s: the service's refresh: %v", why, err)
		}
		if ok, code := fake.Valid(fresh.Value); !ok || fresh.Revision <= dead.Revision {
			t.Fatalf("%s: the refreshed token (revision %d after %d) is rejected with %d", why, fresh.Revision, dead.Revision, code)
		}
		return fresh
	}

	// The secret is reset in the console and the token in use ends: the
	// leader can fetch no new one, and says what to do.
	newSecret, err := fake.ResetSecret(appA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fake.Reject(appA); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Refresh(ctx, sub.Token().Revision); err == nil || !strings.Contains(err.Error(), "40125") {
		t.Fatalf("refresh with the old secret: %v, want WeChat's 40125", err)
	}
	one.waitOutput(t, ctx, "reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set "+appA+"`")

	// A wrong secret: refused by the leader, nothing changes anywhere.
	out, code := secretSet(t, ctx, env, "not-the-new-secret", appA)
	if code != 1 || !strings.Contains(out, "errcode 40125") || !strings.Contains(out, "nothing changed") {
		t.Fatalf("secret set with a wrong secret: exit %d, output:\n%s\nwant 1, WeChat's 40125 and nothing changed", code, out)
	}
	if data, _ := os.ReadFile(secretFile); string(data) != "old-secret\n" {
		t.Fatalf("a refused secret changed the secret file: %q", data)
	}
	for _, p := range []*process{one, two} {
		if strings.Contains(p.output.String(), "secret set: the new secret is in use") {
			t.Fatalf("%s took a secret the leader refused", p.name)
		}
	}

	// The new secret: both take it; the service's next refresh works.
	out, code = secretSet(t, ctx, env, newSecret, appA)
	set := time.Now()
	if code != 0 {
		t.Fatalf("secret set with the new secret: exit %d, output:\n%s", code, out)
	}
	if strings.Contains(out, newSecret) {
		t.Error("secret set printed the secret")
	}
	for _, want := range []string{
		"checked by the leader one: WeChat accepts the secret of " + appA,
		"one (leader): taken, written to " + secretFile,
		"two: taken, held in memory only: update SECRET_A before the next restart",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("secret set's output lacks %q:\n%s", want, out)
		}
	}
	if data, _ := os.ReadFile(secretFile); string(data) != newSecret+"\n" {
		t.Errorf("the secret file holds %q, want the new secret", data)
	}
	if fi, err := os.Stat(secretFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the secret file's mode: %v, %v; want 0600", fi.Mode(), err)
	}
	two.waitOutput(t, ctx, `level=WARN msg="secret set: held in memory only: update SECRET_A before the next restart"`)
	refreshed("after secret set")
	t.Logf("secret set's exit to the service's new token: %s", time.Since(set).Round(time.Millisecond))

	// A reload reads the old secret again from the standby's environment:
	// it keeps the one set.
	hangUp(t, ctx, 1, two)
	two.waitOutput(t, ctx, "reload: the secret set with `wxtoken secret set` is kept")
	if strings.Contains(two.output.String(), "changed="+appA) {
		t.Error("the standby's reload put the old secret back")
	}

	// A wrong secret file on the leader: refused with an ERROR, and the
	// running (set) secret makes the next rotation.
	writeFile(t, secretFile, "a-wrong-secret\n")
	hangUp(t, ctx, 1, one)
	one.waitOutput(t, ctx, `level=ERROR msg="reload: WeChat refuses the new secret (the AppSecret is invalid); the running secret is kept: reset it in WeChat's console, then give the new one to wxtoken with `+"`wxtoken secret set "+appA+"`"+`" appid=`+appA+" errcode=40125")
	fake.Reject(appA)
	refreshed("after a wrong secret file")

	// Reset again, and the right secret in the file: taken.
	newer, err := fake.ResetSecret(appA)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, secretFile, newer+"\n")
	hangUp(t, ctx, 2, one)
	one.waitOutputCount(t, ctx, "changed="+appA, 1)
	fake.Reject(appA)
	refreshed("after a right secret file")
	if n := strings.Count(one.output.String(), "became leader"); n != 1 || strings.Contains(two.output.String(), "became leader") {
		t.Errorf("leadership changed hands (one became leader %d times): the rotation was not without a restart", n)
	}

	// No restart: the same processes, one leader throughout, neither
	// stopped and started again.
	for i, p := range []*process{one, two} {
		p.alive(t)
		if err := syscall.Kill(pids[i], 0); err != nil {
			t.Errorf("%s (pid %d) is gone: %v", p.name, pids[i], err)
		}
		if out := p.output.String(); strings.Contains(out, `msg=stopped`) {
			t.Errorf("%s stopped", p.name)
		}
		for _, secret := range []string{newSecret, newer, "a-wrong-secret", "not-the-new-secret"} {
			if strings.Contains(p.output.String(), secret) {
				t.Errorf("%s logged a secret", p.name)
			}
		}
	}
}
