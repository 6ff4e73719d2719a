package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
)

// ListenOptions say how exposed a listener may be.
type ListenOptions struct {
	TLS      *tls.Config // serve HTTPS
	Auth     bool        // the agent has clients (an auth file)
	Insecure bool        // the operator lets a non-loopback address go without auth and TLS
}

// unixPrefix marks a unix socket's path in a listen address.
const unixPrefix = "unix:"

// Listen opens the agent's listener on addr: "host:port", or
// "unix:/path/agent.sock" for a unix socket (mode 0660, so that only its
// owner and group may connect). An address other than loopback's serves
// tokens to the network: it needs an auth file and TLS, or Insecure.
func Listen(addr string, o ListenOptions) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		return listenUnix(path, o.TLS)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: host:port or unix:/path: %w", addr, err)
	}
	if !isLoopback(host) && !o.Insecure && (!o.Auth || o.TLS == nil) {
		return nil, fmt.Errorf("--listen %s is not a loopback address: tokens would be served to the network; "+
			"give --auth-file and --listen-tls-cert/--listen-tls-key, or --insecure-listen if you know what you do", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	if o.TLS != nil {
		ln = tls.NewListener(ln, o.TLS)
	}
	return ln, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listenUnix listens on a unix socket at path. A socket left there by an
// agent that died is replaced; one that answers is not.
func listenUnix(path string, tlsConfig *tls.Config) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("--listen unix: needs a path, as unix:/run/wxtoken/agent.sock")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("--listen: %s exists and is not a socket", path)
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("--listen: %s is in use by another process", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("--listen: %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--listen: removing the stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--listen: %w", err)
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	return ln, nil
}
