package agent

import (
	"crypto/tls"
	"math"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadClientsNamesTheClientAndTheField(t *testing.T) {
	cases := map[string]string{
		"clients: []":                            "no clients",
		"clients:\n  - name: a\n    keys: ['*']": `client 1 ("a"): token or token_sha256 is required`,
		"clients:\n  - name: a\n    token: short\n    keys: ['*']":                                                                       "at least 16 characters",
		"clients:\n  - name: a\n    token: 0123456789abcdef\n    token_sha256: ab\n    keys: ['*']":                                      "not both",
		"clients:\n  - name: a\n    token_sha256: xyz\n    keys: ['*']":                                                                  "64 hex digits",
		"clients:\n  - name: a\n    token: 0123456789abcdef":                                                                             "keys: name the keys",
		"clients:\n  - name: a\n    token: 0123456789abcdef\n    keys: [wx1234567890abcdef.bogus]":                                       "keys:",
		"clients:\n  - token: 0123456789abcdef\n    keys: ['*']":                                                                         "name is required",
		"clients:\n  - name: a\n    token: 0123456789abcdef\n    keys: ['*']\n  - name: a\n    token: 0123456789abcdeX\n    keys: ['*']": `client 2 ("a"): the name is taken`,
		"clients:\n  - name: a\n    token: 0123456789abcdef\n    keys: ['*']\n  - name: b\n    token: 0123456789abcdef\n    keys: ['*']": "another client's too",
		"clients:\n  - name: a\n    token: 0123456789abcdef\n    key: ['*']":                                                             `unknown key "key" in clients[0] (did you mean keys?)`,
	}
	for file, want := range cases {
		path := filepath.Join(t.TempDir(), "auth.yaml")
		os.WriteFile(path, []byte(file), 0o600)
		_, err := LoadClients(path)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadClients(%q) = %v, want an error with %q", file, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "0123456789abcde") {
			t.Errorf("the error shows the token: %v", err)
		}
	}
}

func TestClientsAreIdentifiedByBearerOrBasic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(path, []byte("clients:\n  - name: shop\n    token: shop-token-0123456789\n    keys: [wx1234567890abcdef]\n"), 0o600)
	clients, err := LoadClients(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := newClientSet(clients)
	for _, tc := range []struct {
		header string
		ok     bool
	}{
		{"Bearer shop-token-0123456789", true},
		{"bearer shop-token-0123456789", true},
		{"Basic c2hvcDpzaG9wLXRva2VuLTAxMjM0NTY3ODk=", true}, // shop:shop-token-0123456789
		{"Bearer shop-token-012345678", false},
		{"", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", tc.header)
		c, ok := cs.identify(r)
		if ok != tc.ok || (ok && (!c.may("wx1234567890abcdef") || c.may("wx00000000000000ff"))) {
			t.Errorf("Authorization %q: identified %v, want %v, with its one key", tc.header, ok, tc.ok)
		}
	}
}

func TestListenGuardsTheNetwork(t *testing.T) {
	guarded := ListenOptions{TLS: &tls.Config{}, Auth: true}
	for _, tc := range []struct {
		addr string
		o    ListenOptions
		ok   bool
	}{
		{"127.0.0.1:0", ListenOptions{}, true},
		{"[::1]:0", ListenOptions{}, true},
		{"localhost:0", ListenOptions{}, true},
		{":0", ListenOptions{}, false},
		{"0.0.0.0:0", ListenOptions{Auth: true}, false},
		{"0.0.0.0:0", ListenOptions{TLS: &tls.Config{}}, false},
		{"0.0.0.0:0", guarded, true},
		{"0.0.0.0:0", ListenOptions{Insecure: true}, true},
		{"nohost", ListenOptions{}, false},
	} {
		ln, err := Listen(tc.addr, tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("Listen(%q, auth %v, tls %v, insecure %v) = %v, want ok %v", tc.addr, tc.o.Auth, tc.o.TLS != nil, tc.o.Insecure, err, tc.ok)
		}
		if ln != nil {
			ln.Close()
		}
	}
}

func TestListenReplacesAStaleSocketOnly(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := Listen(unixPrefix+sock, ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(unixPrefix+sock, ListenOptions{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a second agent on a socket in use: %v, want refused", err)
	}
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close() // as an agent that died would leave it
	ln, err = Listen(unixPrefix+sock, ListenOptions{})
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	ln.Close()
}

func TestBadPaths(t *testing.T) {
	for raw, bad := range map[string]bool{
		"/cgi-bin/token":                  false,
		"/app/wx1234567890abcdef/cgi-bin": false,
		"//cgi-bin/token":                 false,
		"/cgi-bin/../v1/credentials/x":    true,
		"/cgi-bin/%2e%2e/v1":              true,
		"/cgi-bin%2Ftoken":                true,
		"/cgi-bin%5ctoken":                true,
		"/cgi-bin/./token":                true,
		"/cgi-bin/%00":                    true,
		"/cgi-bin/%7f":                    true,
	} {
		r := httptest.NewRequest("GET", "http://agent"+raw, nil)
		if got := badPath(r) != ""; got != bad {
			t.Errorf("badPath(%q) = %q, want bad %v", raw, badPath(r), bad)
		}
	}
	if got := collapseSlashes("//cgi-bin///token/"); got != "/cgi-bin/token/" {
		t.Errorf("collapseSlashes = %q", got)
	}
}

func TestNamedRevisionAndWait(t *testing.T) {
	for _, tc := range []struct {
		query, inm string
		rev        uint64
		cond       bool
	}{
		{"", "", 0, false},
		{"", `"12"`, 12, true},
		{"", `W/"12", "15"`, 15, true},
		{"", `*`, math.MaxUint64, true},
		{"after=7", `"12"`, 7, true},
	} {
		r := httptest.NewRequest("GET", "/v1/credentials/x?"+tc.query, nil)
		if tc.inm != "" {
			r.Header.Set("If-None-Match", tc.inm)
		}
		rev, cond, err := namedRevision(r, r.URL.Query())
		if err != nil || rev != tc.rev || cond != tc.cond {
			t.Errorf("?%s If-None-Match %s: %d %v %v, want %d %v", tc.query, tc.inm, rev, cond, err, tc.rev, tc.cond)
		}
	}
	if _, _, err := namedRevision(httptest.NewRequest("GET", "/", nil), url.Values{"after": {"x"}}); err == nil {
		t.Error("after=x was taken")
	}
	for s, want := range map[string]time.Duration{"": 0, "25": 25 * time.Second, "1.5s": 1500 * time.Millisecond, "3600": time.Minute} {
		if got, err := parseWait(s, time.Minute); err != nil || got != want {
			t.Errorf("parseWait(%q) = %v %v, want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"soon", "-5s", "-1"} {
		if _, err := parseWait(s, time.Minute); err == nil {
			t.Errorf("parseWait(%q) was taken", s)
		}
	}
}

// TestAuthFileErrorsNameTheLine: a mistake in the auth file is reported at
// its line, as file:line; an unknown key is listed against the valid keys,
// with no Go type in sight.
func TestAuthFileErrorsNameTheLine(t *testing.T) {
	const client = "clients:\n  - name: shop\n    token: 0123456789abcdef\n"
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown key": {client + "    key: ['*']\n",
			`:4: unknown key "key" in clients[0] (did you mean keys?); the keys there are keys, login, name, token, token_sha256`},
		"bad indent": {client + "   keys: ['*']\n",
			`:4: not YAML: did not find expected '-' indicator (check the indentation`},
		"not a list": {"clients:\n  name: shop\n",
			`:2: clients must be a list`},
	} {
		path := filepath.Join(t.TempDir(), "auth.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		_, err := LoadClients(path)
		if want := "auth file " + path + tc.want; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v\nwant %s...", name, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "struct") || strings.Contains(err.Error(), "0123456789abcdef")) {
			t.Errorf("%s: a Go type or the token in the error: %v", name, err)
		}
	}
}
