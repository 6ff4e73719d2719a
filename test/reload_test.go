package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// writeFile writes content to path, failing the test if it cannot.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hangUp sends SIGHUP to each process and waits until each has told how
// the reload went, by the nth line that says so.
func hangUp(t *testing.T, ctx context.Context, n int, ps ...*process) {
	t.Helper()
	for _, p := range ps {
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range ps {
		p.waitUntil(t, ctx, fmt.Sprintf("the outcome of reload %d", n), func(out string) bool {
			return strings.Count(out, `msg="apps reloaded"`)+strings.Count(out, `msg="reload refused`) >= n
		})
	}
}

// TestSIGHUPReloadsApps runs a leader and a standby from an apps file and
// changes the file under them, with SIGHUP to both after each change. A
// new app gets its first token, a changed secret takes effect at once
// (even after WeChat refused the old one), a removed app is no longer
// served and its key stays, a file that does not load is refused and the
// running apps stay. The lease is kept through all of it, and the standby,
// having reloaded too, takes over with the newest apps.
func TestSIGHUPReloadsApps(t *testing.T) {
	const appB = "wxb000000000000002"
	ctx := testenv.Context(t, 90*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	js, _ := jetstream.New(nc)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	fake.AddApp(appA, "secret-of-a")
	fake.AddApp(appB, "secret-of-b")
	dir := t.TempDir()
	appsFile, secretB := filepath.Join(dir, "apps.yaml"), filepath.Join(dir, "b.secret")
	writeFile(t, secretB, "secret-of-b\n")
	onlyA := "apps:\n  - appid: " + appA + "\n    secret_env: SECRET_A\n"
	withB := onlyA + "  - appid: " + appB + "\n    secret_file: " + secretB + "\n"
	writeFile(t, appsFile, onlyA)
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + wechatURL, "SECRET_A=secret-of-a",
		"WXTOKEN_APPS=" + appsFile, "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s", "WXTOKEN_MIN_FORCE_INTERVAL=1ms"}
	one := startWxtoken(t, "one", env, "serve", "--instance", "one")
	one.waitOutput(t, ctx, "token rotated")
	two := startWxtoken(t, "two", env, "serve", "--instance", "two")
	two.waitOutput(t, ctx, "standing by")
	bucket := testenv.Bucket(t, ctx, nc)
	held := leaseHolder(t, ctx, js)
	reloads := 0
	hup := func() {
		t.Helper()
		reloads++
		hangUp(t, ctx, reloads, one, two)
	}

	// A new app.
	writeFile(t, appsFile, withB)
	entriesB := testenv.Entries(t, bucket, appB)
	sent := time.Now()
	hup()
	first := testenv.Next(t, ctx, entriesB)
	t.Logf("SIGHUP to the new app's first token: %s", time.Since(sent).Round(time.Millisecond))
	if ok, code := fake.Valid(testenv.Record(t, first).Value); !ok {
		t.Errorf("the new app's token is rejected with %d", code)
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token fetches for the app that stayed, want 1", got)
	}

	// A new secret at WeChat: the old one is refused, and the app waits
	// out a configuration error. The new secret in the file ends the wait.
	fake.AddApp(appB, "new-secret-of-b")
	fake.Issue(appB) // the token in the bucket is dead
	rev := first.Revision()
	if reply := request(t, ctx, nc, appB, kv.RefreshRequest{StaleRevision: &rev}); reply.Error == nil || reply.Error.Code != kv.CodeUpstream {
		t.Fatalf("refresh with the old secret: %+v, want WeChat's refusal", reply)
	}
	writeFile(t, secretB, "new-secret-of-b\n")
	hup()
	reply := request(t, ctx, nc, appB, kv.RefreshRequest{StaleRevision: &rev})
	if !reply.Refreshed || reply.Error != nil {
		t.Fatalf("refresh with the new secret: %+v", reply)
	}
	if e := testenv.Next(t, ctx, entriesB); e.Revision() != reply.Revision || testenv.Record(t, e).Value != fake.Current(appB) {
		t.Errorf("revision %d stored, want WeChat's new token at %d", e.Revision(), reply.Revision)
	}
	if strings.Contains(one.output.String(), "new-secret-of-b") || strings.Contains(two.output.String(), "new-secret-of-b") {
		t.Error("a secret is in the logs")
	}

	// A removed app: not served, its key left as it was.
	kept, err := bucket.Get(ctx, appA)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, appsFile, "apps:\n  - appid: "+appB+"\n    secret_file: "+secretB+"\n")
	hup()
	if reply := request(t, ctx, nc, appA, kv.RefreshRequest{}); reply.Error == nil || reply.Error.Code != kv.CodeUnknownApp {
		t.Errorf("request for the removed app: %+v, want unknown_app", reply)
	}
	if e, err := bucket.Get(ctx, appA); err != nil || e.Revision() != kept.Revision() {
		t.Errorf("the removed app's key changed: %v", err)
	}

	// A file that does not load: refused, the running apps stay.
	writeFile(t, appsFile, "apps:\n  - appid: "+appB+"\n    secret_fil: "+secretB+"\n")
	hup()
	for _, p := range []*process{one, two} {
		if !strings.Contains(p.output.String(), `level=ERROR msg="reload refused; the running apps stay"`) {
			t.Errorf("%s did not refuse the broken file in an error line", p.name)
		}
	}
	if reply := request(t, ctx, nc, appB, kv.RefreshRequest{}); reply.Error != nil {
		t.Errorf("after a refused reload: %+v", reply)
	}

	if now := leaseHolder(t, ctx, js); now != held {
		t.Errorf("lease %+v after the reloads, want %+v still", now, held)
	}

	// The standby reloaded too: it takes over with the newest apps.
	calls := fake.Calls(appB)
	one.cmd.Process.Signal(syscall.SIGKILL)
	two.waitOutput(t, ctx, "became leader")
	if reply := awaitEndpoint(t, ctx, nc, appB); reply.Error != nil || reply.Revision == 0 {
		t.Errorf("after the takeover, appB: %+v", reply)
	}
	if reply := request(t, ctx, nc, appA, kv.RefreshRequest{}); reply.Error == nil || reply.Error.Code != kv.CodeUnknownApp {
		t.Errorf("after the takeover, the removed app: %+v, want unknown_app", reply)
	}
	if got := fake.Calls(appB); got != calls {
		t.Errorf("%d token fetches for appB at the takeover, want none", got-calls)
	}
}
