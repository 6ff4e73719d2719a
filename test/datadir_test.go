package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/dirlock"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestServeLocksItsDataDir runs `wxtoken serve` with its embedded NATS on a
// data directory that does not exist yet, then a second serve on the same
// directory with another --nats-listen, as a user who changed only the port
// would (and one that names the directory in a --nats-config file). The
// second exits at once, naming the first's PID and what to change, and
// never starts a NATS server on the store. One with a store of its own on
// the first one's port is told that another serve may be running there. After the first is
// SIGKILLed (it releases nothing), a new serve takes the stale lock over
// and leads with the token the store kept.
func TestServeLocksItsDataDir(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")
	dataDir := filepath.Join(t.TempDir(), "new", "wxtoken-data")
	env := []string{"WECHAT_BASE_URL=" + wechatURL, "WECHAT_APPID=" + appA, "WECHAT_APPSECRET=secret-of-a",
		"WXTOKEN_DATA_DIR=" + dataDir, "WXTOKEN_LEASE_TTL=2s", "WXTOKEN_UPSTREAM_TIMEOUT=1s"}
	firstListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	first := startWxtoken(t, "first", env, "serve", "--nats-listen", firstListen, "--instance", "first")
	first.waitOutput(t, ctx, "token rotated")
	pid := first.cmd.Process.Pid
	stored := awaitEndpoint(t, ctx, testenv.Connect(t, "nats://"+firstListen), appA)

	// The same store twice: by --data-dir (its variable), and by the
	// store_dir of a --nats-config file. And a store of its own on the
	// first one's port.
	secondListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := filepath.Join(t.TempDir(), "nats.conf")
	writeFile(t, config, fmt.Sprintf("listen: %q\njetstream { store_dir: %q }\n", secondListen, dataDir))
	configEnv := slices.DeleteFunc(slices.Clone(env), func(v string) bool { return strings.HasPrefix(v, "WXTOKEN_DATA_DIR=") })
	sameStore := []string{dataDir, "in use by another wxtoken serve, PID " + strconv.Itoa(pid), "--data-dir", "--nats-listen", "--nats-url nats://" + firstListen}
	for _, second := range []struct {
		name string
		env  []string
		args []string
		want []string // in its error
	}{
		{"second", env, []string{"--nats-listen", secondListen}, sameStore},
		{"second-by-config", configEnv, []string{"--nats-config", config}, sameStore},
		{"second-on-the-port", env, []string{"--nats-listen", firstListen, "--data-dir", filepath.Join(t.TempDir(), "own")},
			[]string{firstListen + " is in use, perhaps by another wxtoken serve", "--nats-url nats://" + firstListen, "--nats-listen", "--data-dir"}},
	} {
		started := time.Now()
		p := startWxtoken(t, second.name, second.env, append([]string{"serve", "--instance", second.name}, second.args...)...)
		if code := p.wait(t, testenv.Context(t, 10*time.Second)); code != 1 {
			t.Errorf("%s: exit status %d, want 1", second.name, code)
		}
		t.Logf("%s exited %s after it started", second.name, time.Since(started).Round(time.Millisecond))
		out := p.output.String()
		for _, want := range second.want {
			if !strings.Contains(out, want) {
				t.Errorf("%s's error lacks %q:\n%s", second.name, want, out)
			}
		}
		for _, never := range []string{"embedded NATS server running", "leading", "standing by", "token rotated"} {
			if strings.Contains(out, never) {
				t.Errorf("%s logged %q: it started beside the first one\n%s", second.name, never, out)
			}
		}
	}
	if c, err := net.DialTimeout("tcp", secondListen, time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on %s, where the second serve would have", secondListen)
	}
	first.alive(t)
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token fetches, want the first serve's 1", got)
	}

	// SIGKILL: the lock file stays, with the dead PID in it; the kernel
	// has dropped the lock.
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.wait(t, ctx)
	third := startWxtoken(t, "third", env, "serve", "--nats-listen", secondListen, "--instance", "third")
	// It says the token it found is valid, and fetches none (below).
	third.waitOutput(t, ctx, `leading: refreshing tokens" credentials=1 still_valid=1 `)
	lock, err := os.ReadFile(filepath.Join(dataDir, dirlock.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.SplitN(string(lock), "\n", 2)[0], strconv.Itoa(third.cmd.Process.Pid); got != want {
		t.Errorf("the lock file names PID %s, want the new holder's %s", got, want)
	}
	// The store was not harmed: the token it kept is still the one in use.
	if reply := awaitEndpoint(t, ctx, testenv.Connect(t, "nats://"+secondListen), appA); reply.Error != nil || reply.Revision != stored.Revision {
		t.Errorf("after the takeover: %+v, want revision %d, the first serve's token", reply, stored.Revision)
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d token fetches after the takeover, want 1: the stored token was valid", got)
	}
}
