// Package embedded runs a NATS server with JetStream inside the wxtoken
// process, so that one command runs the whole system on one machine.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultListen is where the embedded server accepts clients: loopback only,
// on NATS's standard port, so services on the same machine find it.
const DefaultListen = "127.0.0.1:4222"

// readyTimeout bounds start-up; recovering a large JetStream store is the
// slow part.
const readyTimeout = 30 * time.Second

// Options returns server options for a single JetStream server listening on
// listen ("host:port"; port -1 picks a free one) and storing in storeDir.
func Options(listen, storeDir string) (*server.Options, error) {
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("embedded: listen address %q: bad port", listen)
	}
	return &server.Options{
		ServerName: "wxtoken-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
	}, nil
}

// FromConfigFile loads a nats-server configuration file. A store directory
// missing from the file is set to storeDir, so JetStream data lands where
// --data-dir says.
func FromConfigFile(path, storeDir string) (*server.Options, error) {
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	if opts.StoreDir == "" {
		opts.StoreDir = storeDir
	}
	return opts, nil
}

// Start starts a server with opts and waits until it accepts clients.
// Server logs go to logger, notices at debug level (nothing is logged when
// logger is nil).
func Start(opts *server.Options, logger *slog.Logger) (*server.Server, error) {
	opts.NoSigs = true // the process owns its signals
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	fatal := &fatalCatcher{}
	s.SetLoggerV2(&slogAdapter{logger: logger, fatal: fatal}, opts.Debug, opts.Trace, false)
	s.Start()
	deadline := time.Now().Add(readyTimeout)
	for !s.ReadyForConnections(50 * time.Millisecond) {
		// nats-server reports a failed listen through Fatalf and carries on;
		// catching it turns "port 4222 in use" into an error now, not a timeout.
		if err := fatal.err(); err != nil {
			s.Shutdown()
			return nil, fmt.Errorf("embedded: %w", err)
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			return nil, fmt.Errorf("embedded: server not ready after %s", readyTimeout)
		}
	}
	if err := fatal.err(); err != nil {
		s.Shutdown()
		return nil, fmt.Errorf("embedded: %w", err)
	}
	return s, nil
}

type fatalCatcher struct {
	mu    sync.Mutex
	first error
}

func (f *fatalCatcher) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		f.first = err
	}
}

func (f *fatalCatcher) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first
}

// slogAdapter is the server.Logger that writes to slog.
type slogAdapter struct {
	logger *slog.Logger
	fatal  *fatalCatcher
}

func (a *slogAdapter) log(level slog.Level, format string, v []any) {
	if a.logger != nil {
		a.logger.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

// Noticef logs at debug: the server's start-up banner would drown the
// refresher's own lines, which say where clients connect.
func (a *slogAdapter) Noticef(format string, v ...any) { a.log(slog.LevelDebug, format, v) }
func (a *slogAdapter) Warnf(format string, v ...any)   { a.log(slog.LevelWarn, format, v) }
func (a *slogAdapter) Errorf(format string, v ...any)  { a.log(slog.LevelError, format, v) }
func (a *slogAdapter) Debugf(format string, v ...any)  { a.log(slog.LevelDebug, format, v) }
func (a *slogAdapter) Tracef(format string, v ...any)  { a.log(slog.LevelDebug-4, format, v) }

func (a *slogAdapter) Fatalf(format string, v ...any) {
	a.fatal.set(newFatalError(format, v))
	a.log(slog.LevelError, format, v)
}

// fatalError is what the server reported through Fatalf. It wraps the
// first error among the arguments, which the server formats with %q: a
// caller can then tell "address already in use" (errors.Is with
// syscall.EADDRINUSE) from other failures.
type fatalError struct {
	msg   string
	cause error
}

func newFatalError(format string, v []any) *fatalError {
	e := &fatalError{msg: fmt.Sprintf(format, v...)}
	for _, arg := range v {
		if err, ok := arg.(error); ok {
			e.cause = err
			break
		}
	}
	return e
}

func (e *fatalError) Error() string { return e.msg }
func (e *fatalError) Unwrap() error { return e.cause }
