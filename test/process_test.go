package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/test/testenv"
)

var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// wxtokenBinary builds cmd/wxtoken once per test run.
func wxtokenBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "wxtoken-test-bin")
		if binary.err != nil {
			return
		}
		// go test puts its own GOROOT/bin first on the PATH.
		goTool, err := exec.LookPath("go")
		if err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(binary.dir, "wxtoken")
		out, err := exec.Command(goTool, "build", "-o", binary.path, "../cmd/wxtoken").CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

// process is a running `wxtoken` command.
type process struct {
	name   string
	cmd    *exec.Cmd
	output *notifyingBuffer
	exited chan struct{}
	err    error // set when exited closes
}

// startWxtoken runs the binary with args and env (added to a minimal one).
// A serve probes no secret unless env says how often: the tests before
// the probes count WeChat's calls and give the fetches their faults, which
// a probe would take (probe_test.go sets WXTOKEN_PROBE_EVERY).
func startWxtoken(t *testing.T, name string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(wxtokenBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "WXTOKEN_PROBE_EVERY=0"}, env...)
	cmd.Dir = t.TempDir()
	p := &process{name: name, cmd: cmd, output: newNotifyingBuffer(), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, p.output.String())
		}
	})
	return p
}

// waitOutput waits until the process printed s; it fails at once if the
// process exits first.
func (p *process) waitOutput(t *testing.T, ctx context.Context, s string) {
	t.Helper()
	p.waitOutputCount(t, ctx, s, 1)
}

// waitOutputCount waits until the process printed s n times.
func (p *process) waitOutputCount(t *testing.T, ctx context.Context, s string, n int) {
	t.Helper()
	p.waitUntil(t, ctx, fmt.Sprintf("%q %d times", s, n), func(out string) bool { return strings.Count(out, s) >= n })
}

// waitOutputAny waits until the process printed one of ss, and returns it.
func (p *process) waitOutputAny(t *testing.T, ctx context.Context, ss ...string) string {
	t.Helper()
	var found string
	p.waitUntil(t, ctx, fmt.Sprintf("any of %q", ss), func(out string) bool {
		for _, s := range ss {
			if strings.Contains(out, s) {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// waitUntil waits until done holds for the process's output; it fails at
// once if the process exits first.
func (p *process) waitUntil(t *testing.T, ctx context.Context, what string, done func(output string) bool) {
	t.Helper()
	for {
		p.output.mu.Lock()
		written := p.output.written
		p.output.mu.Unlock()
		out := p.output.String()
		if done(out) {
			return
		}
		select {
		case <-written:
		case <-p.exited:
			if done(p.output.String()) {
				return // printed just before it exited
			}
			t.Fatalf("%s exited before printing %s: %v\n%s", p.name, what, p.err, p.output.String())
		case <-ctx.Done():
			t.Fatalf("%s never printed %s\n%s", p.name, what, out)
		}
	}
}

// alive fails the test if the process has exited.
func (p *process) alive(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("%s exited: %v\n%s", p.name, p.err, p.output.String())
	default:
	}
}

// wait waits for the process to exit and returns its exit status.
func (p *process) wait(t *testing.T, ctx context.Context) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-ctx.Done():
		t.Fatalf("%s did not exit", p.name)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode()
	}
	return 0
}

// notifyingBuffer is a log buffer one can wait on.
type notifyingBuffer struct {
	syncBuffer
	mu      sync.Mutex
	written chan struct{}
}

func newNotifyingBuffer() *notifyingBuffer { return &notifyingBuffer{written: make(chan struct{})} }

func (b *notifyingBuffer) Write(p []byte) (int, error) {
	n, err := b.syncBuffer.Write(p)
	b.mu.Lock()
	close(b.written)
	b.written = make(chan struct{})
	b.mu.Unlock()
	return n, err
}

// waitForCount waits until s appears at least n times.
func (b *notifyingBuffer) waitForCount(ctx context.Context, s string, n int) error {
	for {
		b.mu.Lock()
		written := b.written
		b.mu.Unlock()
		if strings.Count(b.String(), s) >= n {
			return nil
		}
		select {
		case <-written:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitFor waits until s appears.
func (b *notifyingBuffer) waitFor(ctx context.Context, s string) error {
	return b.waitForCount(ctx, s, 1)
}

// TestReplicaProcessesFailOver runs `wxtoken serve` replicas as processes.
// A SIGKILLed leader (no chance to release its lease) is replaced once its
// lease lapses; a SIGTERMed one exits cleanly and hands over at once.
func TestReplicaProcessesFailOver(t *testing.T) {
	ctx := testenv.Context(t, 90*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	fake.AddApp(appA, "secret-of-a")
	const ttl = 2 * time.Second
	env := []string{"NATS_URL=" + srv.ClientURL(), "WECHAT_BASE_URL=" + url, "WECHAT_APPID=" + appA,
		"WECHAT_APPSECRET=secret-of-a", "WXTOKEN_LEASE_TTL=" + ttl.String(), "WXTOKEN_UPSTREAM_TIMEOUT=1s"}
	nc := testenv.Connect(t, srv.ClientURL())

	one := startWxtoken(t, "one", env, "serve", "--instance", "one")
	one.waitOutput(t, ctx, "token rotated")
	first := awaitEndpoint(t, ctx, nc, appA)
	leases := leaseHolders(t, ctx, nc)
	two := startWxtoken(t, "two", env, "serve", "--instance", "two")
	two.waitOutput(t, ctx, "standing by")

	one.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	events := awaitHolder(t, ctx, leases, "two")
	t.Logf("takeover %s after SIGKILL of the leader (lease TTL %s)", time.Since(killed).Round(time.Millisecond), ttl)
	// A killed leader releases nothing: the standby may lead only once the
	// last renewal has lapsed on the server.
	if released(events) {
		t.Error("the lease was released: the leader was not killed")
	}
	if took, last := events[len(events)-1].at, lastRenewal(events, "one"); took.Sub(last) < ttl {
		t.Errorf("two took the lease %s after one's last renewal, sooner than the TTL %s", took.Sub(last), ttl)
	}
	if reply := awaitEndpoint(t, ctx, nc, appA); reply.Error != nil || reply.Revision != first.Revision {
		t.Errorf("after the takeover: %+v, want the first token", reply)
	}

	three := startWxtoken(t, "three", env, "serve", "--instance", "three")
	three.waitOutput(t, ctx, "standing by")
	two.cmd.Process.Signal(syscall.SIGTERM)
	stopped := time.Now()
	events = awaitHolder(t, ctx, leases, "three")
	if code := two.wait(t, ctx); code != 0 {
		t.Errorf("SIGTERM: exit status %d, want 0", code)
	}
	t.Logf("handover %s after SIGTERM of the leader", time.Since(stopped).Round(time.Millisecond))
	if !released(events) {
		t.Error("after SIGTERM the leader did not release the lease")
	}
	if got := fake.Calls(appA); got != 1 {
		t.Errorf("%d upstream calls over two leader changes, want 1 (the token stayed valid)", got)
	}
}
