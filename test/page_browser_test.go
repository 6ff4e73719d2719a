package test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestStatusPageInChromium runs `wxtoken serve` (embedded NATS, the fake
// WeChat, two apps, one with a jsapi_ticket, the page behind a token)
// and loads its status page in a real headless Chromium: the DOM as
// rendered shows each credential of the bucket with its key, kind and
// revision, no AppSecret nor value, and the page's screenshot is a PNG of
// the window's size. Skipped without chromium, unless
// WXTOKEN_REQUIRE_CLIENTS=1 (CI).
func TestStatusPageInChromium(t *testing.T) {
	chromium := clientInterpreter(t, "chromium", "--version")
	ctx := testenv.Context(t, 90*time.Second)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a-for-the-page")
	fake.AddApp(appB, "secret-of-b-for-the-page")
	dir := t.TempDir()
	appsFile, tokenFile := filepath.Join(dir, "apps.yaml"), filepath.Join(dir, "http-token")
	const token = "page-token-0123456789"
	apps := "apps:\n  - appid: " + appA + "\n    secret_env: SECRET_A\n    tickets: [jsapi]\n  - appid: " + appB + "\n    secret_env: SECRET_B\n"
	for file, content := range map[string]string{appsFile: apps, tokenFile: token + "\n"} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	natsListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startWxtoken(t, "serve", []string{"WECHAT_BASE_URL=" + wechatURL, "SECRET_A=secret-of-a-for-the-page", "SECRET_B=secret-of-b-for-the-page"},
		"serve", "--apps", appsFile, "--nats-listen", natsListen, "--data-dir", t.TempDir(),
		"--http-addr", "127.0.0.1:0", "--http-token-file", tokenFile, "--instance", "page-replica")
	base := p.opsURL(t, ctx)
	if want := "status_page=" + base + "/"; !strings.Contains(p.output.String(), want) {
		t.Errorf("serve does not say where its status page is (%s)", want)
	}
	p.waitOutputCount(t, ctx, "token rotated", 2)
	p.waitOutput(t, ctx, "ticket rotated")

	// The bucket, as the page must show it.
	nc := testenv.Connect(t, "nats://"+natsListen)
	b := testenv.Bucket(t, ctx, nc)
	want := map[string]string{} // key: "kind revision"
	values := map[string]string{}
	for _, key := range []string{appA, appA + "." + kv.KindJSAPITicket, appB} {
		e, err := b.Get(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		_, kind := kv.SplitKey(key)
		if kind == kv.KindToken {
			kind = "access_token"
		}
		want[key] = fmt.Sprintf("%s %d", kind, e.Revision())
		values[key] = testenv.Record(t, e).Value
	}

	// The token goes in the URL as basic auth, as a person would type it.
	pageURL := strings.Replace(base, "http://", "http://status:"+token+"@", 1) + "/"
	home := t.TempDir()
	dom := runChromium(t, ctx, chromium, home, "--dump-dom", pageURL)
	shown := map[string]string{}
	for _, m := range regexp.MustCompile(`data-key="([^"]+)" data-kind="([^"]*)" data-revision="(\d+)"`).FindAllStringSubmatch(dom, -1) {
		shown[m[1]] = m[2] + " " + m[3]
	}
	for key, w := range want {
		if shown[key] != w {
			t.Errorf("chromium shows %s as %q; the bucket holds %q", key, shown[key], w)
		}
	}
	if len(shown) != len(want) {
		t.Errorf("chromium shows %d credentials (%v), the bucket holds %d", len(shown), slices.Collect(maps.Keys(shown)), len(want))
	}
	for _, s := range []string{"This replica leads", "page-replica"} {
		if !strings.Contains(dom, s) {
			t.Errorf("the rendered page lacks %q", s)
		}
	}
	for key, v := range values {
		if strings.Contains(dom, v) {
			t.Errorf("the rendered page shows the value of %s", key)
		}
	}
	for _, secret := range []string{"secret-of-a-for-the-page", "secret-of-b-for-the-page", token} {
		if strings.Contains(dom, secret) {
			t.Errorf("the rendered page shows %q", secret)
		}
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	runChromium(t, ctx, chromium, home, "--screenshot="+shot, "--window-size=1280,2000", pageURL)
	data, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the screenshot is no PNG: %v", err)
	}
	if size := img.Bounds().Size(); size.X != 1280 || size.Y != 2000 {
		t.Errorf("the screenshot is %v, want 1280x2000", size)
	}
	t.Logf("screenshot: %s, %d bytes", shot, len(data))
	if keep := os.Getenv("WXTOKEN_KEEP_SCREENSHOT"); keep != "" {
		os.WriteFile(keep, data, 0o644) // to look at it: WXTOKEN_KEEP_SCREENSHOT=/tmp/page.png
	}
}

// runChromium runs headless chromium with args, its profile in home, until
// it exits or a minute passed, and returns what it printed on stdout. Its
// whole process group is killed after: chromium leaves helpers behind.
func runChromium(t *testing.T, ctx context.Context, chromium, home string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
		"--user-data-dir=" + filepath.Join(home, "profile")}, args...)
	cmd := exec.CommandContext(ctx, chromium, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its helpers, if any are left
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
