package main

import (
	"log/slog"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPprofOnlyWhenAsked: the ops address serves Go's profiles with
// --pprof, and without it answers 404 to them; the command line, which
// may carry what a log may not, is never served.
func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, c := range []struct {
		pprof bool
		path  string
		want  int
	}{
		{true, "/debug/pprof/heap", http.StatusOK},
		{true, "/debug/pprof/goroutine", http.StatusOK},
		{true, "/debug/pprof/profile?seconds=1", http.StatusOK},
		{true, "/debug/pprof/cmdline", http.StatusNotFound},
		{false, "/debug/pprof/heap", http.StatusNotFound},
		{false, "/debug/pprof/profile?seconds=1", http.StatusNotFound},
	} {
		ops, err := startOps("127.0.0.1:0", prometheus.NewRegistry(), func() error { return nil }, c.pprof, nil, "", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + ops.addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ops.stop()
		if resp.StatusCode != c.want {
			t.Errorf("--pprof %v: GET %s: %d, want %d", c.pprof, c.path, resp.StatusCode, c.want)
		}
	}
}
