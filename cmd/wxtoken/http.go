package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// opsServer serves /metrics, /healthz and /readyz, and the refresher's
// status page at /.
type opsServer struct {
	srv  *http.Server
	addr string // where it listens
}

// startOps listens on addr. ready says why the process cannot serve yet,
// or nil. withPprof adds Go's profiles under /debug/pprof/. page, if not
// nil, is the status page. With a token, everything but /healthz and
// /readyz needs it (httpauth.go); without one, on an address other
// machines can reach, the page is not served (pageUnprotected).
func startOps(addr string, reg *prometheus.Registry, ready func() error, withPprof bool, page http.Handler, token string, log *slog.Logger) (*opsServer, error) {
	if page != nil && token == "" && !loopbackAddr(addr) {
		log.Warn("--http-addr can be reached from other machines and no --http-token-file protects it: /metrics is served to anyone, "+
			"the status page to no one; give --http-token-file to see the page, or listen on a loopback address", "addr", addr)
		page = pageUnprotected(addr)
	}
	protected := http.NewServeMux()
	if withPprof {
		servePprof(protected)
	}
	protected.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	if page != nil {
		protected.Handle("GET /{$}", page)
	}
	mux := http.NewServeMux()
	mux.Handle("/", withToken(token, protected))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	o := &opsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: ln.Addr().String()}
	go func() {
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics and health server stopped", "error", err)
		}
	}()
	args := []any{"addr", o.addr}
	if page != nil {
		args = append(args, "status_page", pageURL(o.addr))
	}
	log.Info("serving /metrics, /healthz and /readyz", append(args, "token_needed", token != "")...)
	return o, nil
}

// servePprof adds Go's CPU, heap, goroutine and other profiles, and the
// execution trace, under /debug/pprof/: what `go tool pprof` reads. Not
// /debug/pprof/cmdline: a command line may carry what a log may not.
func servePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// callbackPath is where the authorization-event URL is served.
const callbackPath = "/wechat/platform/events"

// startCallback serves the platforms' authorization-event URL on addr.
// Pushes are small and WeChat waits 5 s for the answer.
func startCallback(addr string, callback http.Handler, log *slog.Logger) (*opsServer, error) {
	mux := http.NewServeMux()
	mux.Handle(callbackPath, callback)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--callback-addr: %w", err)
	}
	o := &opsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	go func() {
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("callback server stopped", "error", err)
		}
	}()
	log.Info("serving the platforms' authorization-event URL", "addr", ln.Addr().String(), "path", callbackPath)
	return o, nil
}

func (o *opsServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	o.srv.Shutdown(ctx)
}

// newRegistry returns a registry with the Go runtime and process metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
