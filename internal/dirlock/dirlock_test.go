package dirlock

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestAcquireHoldsTheDirectoryUntilRelease(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "there", "yet")
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, FileName)); got != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want this process's PID", got)
	}

	// flock locks conflict between two opens of the file, in one process
	// as between two.
	_, err = Acquire(dir)
	var held *HeldError
	if !errors.As(err, &held) || !errors.Is(err, ErrHeld) {
		t.Fatalf("second Acquire: %v, want a HeldError", err)
	}
	if held.PID != os.Getpid() || held.URL != "" || held.Dir != dir {
		t.Errorf("HeldError %+v, want PID %d, no URL, dir %s", held, os.Getpid(), dir)
	}

	const url = "nats://127.0.0.1:4222"
	if err := l.RecordURL(url); err != nil {
		t.Fatal(err)
	}
	if _, err = Acquire(dir); !errors.As(err, &held) || held.URL != url || held.PID != os.Getpid() {
		t.Errorf("after RecordURL: %v (%+v), want the PID and %s", err, held, url)
	}

	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	again, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	again.Release()
}

// TestALockOfADeadProcessIsTakenOver has another process take the lock and
// die by SIGKILL, releasing nothing: its lock file, with its PID, stays, and
// the directory is locked again at once.
func TestALockOfADeadProcessIsTakenOver(t *testing.T) {
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run=^TestHelperHoldsTheLock$")
	holder.Env = append(os.Environ(), "DIRLOCK_HELPER_DIR="+dir)
	// The helper waits on its stdin, which ends only when the test does.
	stdinPipe, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinPipe.Close()
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("the holder said %q, %v", line, err)
	}

	_, err = Acquire(dir)
	var held *HeldError
	if !errors.As(err, &held) || held.PID != holder.Process.Pid {
		t.Fatalf("Acquire while the holder lives: %v, want it held by PID %d", err, holder.Process.Pid)
	}

	holder.Process.Kill()
	holder.Wait()
	stale := readFile(t, filepath.Join(dir, FileName))
	if stale != strconv.Itoa(holder.Process.Pid)+"\n" {
		t.Fatalf("the dead holder's lock file holds %q, want its PID", stale)
	}
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after the holder died: %v", err)
	}
	defer l.Release()
	if got := readFile(t, filepath.Join(dir, FileName)); got != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q after the takeover, want this process's PID", got)
	}
}

// TestHelperHoldsTheLock is the holder of TestALockOfADeadProcessIsTakenOver,
// run as a process of its own: it locks, says so, and waits to be killed.
func TestHelperHoldsTheLock(t *testing.T) {
	dir := os.Getenv("DIRLOCK_HELPER_DIR")
	if dir == "" {
		return // an ordinary run: only a helper process holds the lock
	}
	if _, err := Acquire(dir); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("locked\n")
	bufio.NewReader(os.Stdin).ReadString('\n') // until the test kills it or ends
	os.Exit(0)
}

// TestAPIDIsNotTrusted: a lock file that names a live process (PID 1 always
// is one) but that nobody has locked is free. PIDs are reused; only the
// kernel's lock says who holds the directory.
func TestAPIDIsNotTrusted(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("1\nnats://127.0.0.1:4222\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire with a PID left in an unlocked file: %v", err)
	}
	defer l.Release()
	if got := readFile(t, filepath.Join(dir, FileName)); got != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want only this process's PID", got)
	}
}

func TestADirectoryThatCannotBeMadeIsAnError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Acquire(filepath.Join(file, "data"))
	if err == nil || errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "cannot create "+filepath.Join(file, "data")) {
		t.Errorf("Acquire under a file: %v, want a cannot-create error naming the directory", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
