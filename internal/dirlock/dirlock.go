// Package dirlock locks a directory for the life of a process, so that two
// processes never write one store: two embedded NATS servers on one
// JetStream directory each lead and corrupt it.
//
// The lock is flock(2) on a file inside the directory. The kernel drops it
// when its holder dies, however it dies, so a lock file left by a dead
// process is taken over at once and safely. The file holds the holder's
// PID and, once it says so, where its NATS server listens: these are for
// the message that names the holder, never for deciding who holds the lock
// (a PID may have been reused since).
package dirlock

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// FileName is the lock file's name inside the directory.
const FileName = "wxtoken.lock"

// ErrHeld is matched by errors.Is when another process holds the lock.
var ErrHeld = errors.New("dirlock: the directory is locked by another process")

// HeldError is the error of Acquire when another process holds the lock.
type HeldError struct {
	Dir string
	// PID is the holder's process id; 0 when the file does not say (the
	// holder has not written it yet).
	PID int
	// URL is where the holder's NATS server accepts clients; "" until the
	// holder recorded it.
	URL string
}

func (e *HeldError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = "process " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("dirlock: %s is locked by %s", e.Dir, holder)
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Lock is a held lock. Release it when the directory is no longer used.
type Lock struct {
	f    *os.File
	once sync.Once
	err  error
}

// Acquire locks dir, creating it (mode 0750) if it does not exist yet, and
// writes this process's PID in the lock file. It does not wait: a lock
// another process holds is a *HeldError at once.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("dirlock: cannot create %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		// A lock file this user may not write (another user's process
		// made it) may still be held: say by whom, if it is.
		if held := heldBy(dir, path); held != nil {
			return nil, held
		}
		return nil, fmt.Errorf("dirlock: cannot open %s (the directory must be writable): %w", path, err)
	}
	switch locked, err := tryLock(f); {
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("dirlock: cannot lock %s: %w", path, err)
	case !locked:
		held := &HeldError{Dir: dir}
		held.PID, held.URL = readHolder(f)
		f.Close()
		return nil, held
	}
	l := &Lock{f: f}
	if err := l.write(strconv.Itoa(os.Getpid())); err != nil {
		l.Release()
		return nil, err
	}
	return l, nil
}

// RecordURL adds where this process's NATS server accepts clients to the
// lock file, so that a second process can be told to join it.
func (l *Lock) RecordURL(url string) error {
	return l.write(strconv.Itoa(os.Getpid()) + "\n" + url)
}

// write replaces the lock file's content; the lock stays held throughout.
func (l *Lock) write(content string) error {
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("dirlock: writing %s: %w", l.f.Name(), err)
	}
	if _, err := l.f.WriteAt([]byte(content+"\n"), 0); err != nil {
		return fmt.Errorf("dirlock: writing %s: %w", l.f.Name(), err)
	}
	return nil
}

// Release unlocks the directory. The lock file stays: removing it would
// let a process that opened it just before lock a file nobody else sees.
// It is idempotent.
func (l *Lock) Release() error {
	l.once.Do(func() {
		if err := unlock(l.f); err != nil {
			l.err = fmt.Errorf("dirlock: unlocking %s: %w", l.f.Name(), err)
		}
		if err := l.f.Close(); err != nil && l.err == nil {
			l.err = fmt.Errorf("dirlock: %w", err)
		}
	})
	return l.err
}

// heldBy opens path read-only and reports its holder if it is locked, or
// nil.
func heldBy(dir, path string) *HeldError {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	locked, err := tryLock(f)
	if err != nil {
		return nil
	}
	if locked {
		unlock(f)
		return nil
	}
	held := &HeldError{Dir: dir}
	held.PID, held.URL = readHolder(f)
	return held
}

// readHolder reads the PID and URL a holder wrote; what is missing or
// unreadable is zero.
func readHolder(f *os.File) (pid int, url string) {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err != nil {
		return 0, ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if n, err := strconv.Atoi(strings.TrimSpace(lines[0])); err == nil && n > 0 {
		pid = n
	}
	if len(lines) > 1 {
		url = strings.TrimSpace(lines[1])
	}
	return pid, url
}
