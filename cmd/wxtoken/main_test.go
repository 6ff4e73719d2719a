package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a buffer a command may still write while a test that
// gave up on it reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// commandTimeout bounds a command line of these tests. Each is refused
// before it starts anything, in milliseconds; one that runs instead (a
// serve that goes on to connect) fails the test.
const commandTimeout = 10 * time.Second

// runCommand runs a command line as main does, with env as its whole
// environment, and returns what it printed and its exit status.
func runCommand(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut lockedBuffer
	done := make(chan int, 1)
	go func() { done <- run(args, func(k string) string { return env[k] }, &out, &errOut) }()
	select {
	case code = <-done:
	case <-time.After(commandTimeout):
		t.Fatalf("wxtoken %s still runs after %s; stderr so far:\n%s", strings.Join(args, " "), commandTimeout, errOut.String())
	}
	return out.String(), errOut.String(), code
}

// refused is a command line that must exit 2 with one line on stderr that
// says want.
type refused struct {
	args []string
	env  map[string]string
	want string
}

func (r refused) check(t *testing.T) {
	t.Helper()
	_, errOut, code := runCommand(t, r.env, r.args...)
	if code != 2 || !strings.Contains(errOut, r.want) || strings.Count(errOut, "\n") != 1 {
		t.Errorf("wxtoken %s: exit %d, stderr %q; want 2 and one line saying %q", strings.Join(r.args, " "), code, errOut, r.want)
	}
}
