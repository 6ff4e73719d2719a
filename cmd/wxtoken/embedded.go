package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wxtoken/wxtoken/internal/dirlock"
	"github.com/wxtoken/wxtoken/internal/embedded"
)

// embeddedNATS is serve's embedded NATS server before it starts: its
// options, and the lock on its store directory, which serve takes before
// anything else starts. Two embedded servers on one store would each lead
// and corrupt it.
type embeddedNATS struct {
	opts *server.Options
	lock *dirlock.Lock
}

// lockEmbedded resolves the embedded server's options (flags over
// --nats-config) and locks the store directory they name.
func (f *serveFlags) lockEmbedded() (*embeddedNATS, error) {
	opts, err := f.embeddedOptions()
	if err != nil {
		return nil, err
	}
	lock, err := dirlock.Acquire(opts.StoreDir)
	if err != nil {
		return nil, storeLockError(err)
	}
	return &embeddedNATS{opts: opts, lock: lock}, nil
}

func (f *serveFlags) embeddedOptions() (*server.Options, error) {
	dataDir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return nil, err
	}
	opts, err := embedded.Options(f.listen, dataDir)
	if err != nil {
		return nil, err
	}
	if f.natsConfig == "" {
		return opts, nil
	}
	// The file's settings, except where a flag (or its variable) says
	// otherwise.
	listen := opts
	if opts, err = embedded.FromConfigFile(f.natsConfig, dataDir); err != nil {
		return nil, err
	}
	if f.cmd.given("nats-listen") {
		opts.Host, opts.Port = listen.Host, listen.Port
	}
	if f.cmd.given("data-dir") {
		opts.StoreDir = dataDir
	}
	if opts.StoreDir, err = filepath.Abs(opts.StoreDir); err != nil {
		return nil, err
	}
	return opts, nil
}

// start starts the server on the locked store. The returned func stops it
// and then unlocks the store.
func (e *embeddedNATS) start(log *slog.Logger) (*server.Server, func(), error) {
	srv, err := embedded.Start(e.opts, log.With("component", "nats-server"))
	if err != nil {
		return nil, nil, listenError(err, listenAddr(e.opts))
	}
	// A second serve on this store is told where to join this one.
	if err := e.lock.RecordURL(srv.ClientURL()); err != nil {
		log.Warn("cannot note the NATS address in the data directory's lock file", "error", err)
	}
	log.Info("embedded NATS server running", "clients", srv.ClientURL(), "data_dir", e.opts.StoreDir)
	return srv, func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		e.release()
	}, nil
}

// release unlocks the store; the server must be down. It is idempotent.
func (e *embeddedNATS) release() { e.lock.Release() }

func listenAddr(opts *server.Options) string {
	return net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port))
}

// storeLockError says who holds the store directory and what to change.
func storeLockError(err error) error {
	var held *dirlock.HeldError
	if !errors.As(err, &held) {
		return fmt.Errorf("cannot lock the data directory (give --data-dir a directory this user may write): %w", err)
	}
	holder := "another wxtoken serve (its PID is not written yet: it is starting)"
	if held.PID > 0 {
		holder = fmt.Sprintf("another wxtoken serve, PID %d", held.PID)
	}
	join := "--nats-url with the address it listens on"
	if held.URL != "" {
		join = "--nats-url " + held.URL
	}
	return fmt.Errorf("the data directory %s is in use by %s: two embedded NATS servers on one store would both lead and corrupt it. "+
		"Join the first one's NATS with %s, or give this one its own --data-dir and --nats-listen",
		held.Dir, holder, join)
}

// listenError explains an embedded server that could not start; a port in
// use is most likely another serve's.
func listenError(err error, listen string) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("cannot start the embedded NATS server: %s is in use, perhaps by another wxtoken serve or a NATS server. "+
			"Join that one with --nats-url nats://%s, or give this one another --nats-listen and its own --data-dir", listen, listen)
	}
	return fmt.Errorf("cannot start the embedded NATS server on %s: %w", listen, err)
}
