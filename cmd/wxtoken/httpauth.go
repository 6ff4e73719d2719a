package main

import (
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

// The refresher's HTTP server shows what an outsider should not read: the
// status page (apps, their quotas, who leads) and the metrics. On an
// address beyond this machine it needs --http-token-file: a bearer token,
// which Prometheus sends (authorization: credentials_file) and which a
// browser sends as the password of basic auth, any user name. /healthz and
// /readyz stay open for probes: they say nothing but ready or why not.

// minHTTPTokenLength keeps a guessable token out.
const minHTTPTokenLength = 16

// readHTTPToken reads the token of --http-token-file: the file's content,
// spaces around it trimmed.
func readHTTPToken(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", usagef("--http-token-file: %v", err)
	}
	token := strings.TrimSpace(string(data))
	if len(token) < minHTTPTokenLength {
		return "", usagef("--http-token-file %s: the token must have at least %d characters (e.g. `openssl rand -hex 24 > %s`)",
			file, minHTTPTokenLength, file)
	}
	return token, nil
}

// pageUnprotected answers in place of the status page on an --http-addr
// other machines can reach when no token protects it. The page tells
// more than the metrics do (the apps, their failures, whose calls spend
// their quota), so it is not served open; /metrics and the probes are, as
// they were before the page and its token existed, so that a Prometheus
// scraping from another host keeps working.
func pageUnprotected(addr string) http.Handler {
	_, port, _ := net.SplitHostPort(addr)
	msg := fmt.Sprintf("the status page is not served on %s, which other machines can reach, without a token: "+
		"give wxtoken serve --http-token-file FILE (browsers then ask for it as basic auth's password), or listen on 127.0.0.1:%s", addr, port)
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, msg, http.StatusForbidden)
	})
}

// loopbackAddr reports whether host:port listens on this machine only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// withToken lets through only requests that carry token, as a bearer
// token or as basic auth's password; with no token, every request.
func withToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !carries(r, token) {
			w.Header().Set("WWW-Authenticate", `Basic realm="wxtoken", charset="UTF-8"`)
			http.Error(w, "the token of --http-token-file is needed: as Authorization: Bearer TOKEN, or as basic auth's password", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// carries reports whether r carries token.
func carries(r *http.Request, token string) bool {
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		_, given, ok = r.BasicAuth()
	}
	return ok && subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1
}

// pageURL is the address a person opens to see the status page of a
// server listening on addr.
func pageURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr + "/"
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return fmt.Sprintf("http://%s/", net.JoinHostPort(host, port))
}
