package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestHTTPTokenProtectsPageMetricsAndProfiles: with a token, the status
// page, /metrics and /debug/pprof/ answer 401 (asking a browser for basic
// auth) to a request without it or with another, and 200 to the token as
// a bearer or as basic auth's password; /healthz and /readyz answer
// everyone. Without a token, everything answers everyone.
func TestHTTPTokenProtectsPageMetricsAndProfiles(t *testing.T) {
	const token = "0123456789abcdef-page-token"
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "the page") })
	get := func(t *testing.T, addr, path string, auth func(*http.Request)) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if auth != nil {
			auth(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	bearer := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+v) }
	}
	basic := func(v string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth("anyone", v) } }
	for _, withToken := range []bool{true, false} {
		given := ""
		if withToken {
			given = token
		}
		ops, err := startOps("127.0.0.1:0", prometheus.NewRegistry(), func() error { return nil }, true, page, given, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ops.stop)
		for _, path := range []string{"/healthz", "/readyz"} {
			if resp := get(t, ops.addr, path, nil); resp.StatusCode != http.StatusOK {
				t.Errorf("token %v: GET %s without it: %d, want 200 (probes carry no token)", withToken, path, resp.StatusCode)
			}
		}
		for _, path := range []string{"/", "/metrics", "/debug/pprof/heap"} {
			for _, c := range []struct {
				name string
				auth func(*http.Request)
				ok   bool
			}{
				{"no token", nil, !withToken},
				{"another bearer", bearer(token + "x"), !withToken},
				{"another password", basic("guess"), !withToken},
				{"the bearer", bearer(token), true},
				{"the password", basic(token), true},
			} {
				resp := get(t, ops.addr, path, c.auth)
				want := http.StatusOK
				if !c.ok {
					want = http.StatusUnauthorized
				}
				if resp.StatusCode != want {
					t.Errorf("token %v: GET %s with %s: %d, want %d", withToken, path, c.name, resp.StatusCode, want)
				}
				if want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("GET %s with %s: 401 without WWW-Authenticate: a browser would not ask for the token", path, c.name)
				}
			}
		}
	}
}

// TestAnOpenHTTPAddrWithoutATokenServesNoPage: on an address other
// machines can reach, with no token, the metrics and the probes answer
// everyone, as they did before the page, and the page answers no one,
// saying how to see it.
func TestAnOpenHTTPAddrWithoutATokenServesNoPage(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "the page") })
	ops, err := startOps("0.0.0.0:0", prometheus.NewRegistry(), func() error { return nil }, false, page, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ops.stop)
	_, port, _ := net.SplitHostPort(ops.addr)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://127.0.0.1:" + port + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200 as before the page", path, code)
		}
	}
	code, body := get("/")
	if code != http.StatusForbidden || strings.Contains(body, "the page") || !strings.Contains(body, "--http-token-file") {
		t.Errorf("GET /: %d %q, want 403 naming --http-token-file", code, body)
	}
}

// TestServeRefusesABadHTTPToken: a token file too short or missing, or
// one without --http-addr, is refused before anything starts, saying how
// to fix it.
func TestServeRefusesABadHTTPToken(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range []refused{
		{[]string{"--http-addr", "127.0.0.1:0", "--http-token-file", short}, nil, "the token must have at least 16 characters"},
		{[]string{"--http-addr", ":9090", "--http-token-file", filepath.Join(dir, "none")}, nil, "--http-token-file: open"},
		{[]string{"--http-token-file", short, "--http-addr", ""}, nil, "--http-token-file protects what --http-addr serves: give --http-addr too"},
	} {
		r.args = append(append([]string{"serve", "--demo"}, embeddedArgs(t)...), r.args...)
		r.check(t)
	}
}

// TestLoopbackAddr: what listens on this machine only.
func TestLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9090": true, "127.0.0.2:9090": true, "[::1]:9090": true, "localhost:9090": true,
		":9090": false, "0.0.0.0:9090": false, "[::]:9090": false, "10.0.0.1:9090": false, "metrics.example:9090": false,
	} {
		if got := loopbackAddr(addr); got != want {
			t.Errorf("loopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}
