package main

import (
	"net"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestNATSURLsNotNATSAreRefusedAtOnce: a --nats-url nats.go would try for
// 5 s and then time out on (an http:// address, the agent's, say) is
// refused at once, exit 2, by serve, the agent and the client commands.
func TestNATSURLsNotNATSAreRefusedAtOnce(t *testing.T) {
	web := httptest.NewServer(nil) // answers TCP, never speaks NATS
	defer web.Close()
	const fix = "write nats://HOST:4222 (or tls://, ws://, wss://), or HOST:PORT"
	app := map[string]string{"WECHAT_APPID": "wx1234567890abcdef", "WECHAT_APPSECRET": "s"}
	for _, r := range []refused{
		{[]string{"get", "wx1234567890abcdef", "--nats-url", web.URL}, nil, `--nats-url "` + web.URL + `": http:// is not NATS; ` + fix},
		{[]string{"status"}, map[string]string{"NATS_URL": web.URL}, `--nats-url "` + web.URL + `": http:// is not NATS`},
		{[]string{"watch", "--nats-url", "https://nats.example.com"}, nil, `https:// is not NATS`},
		{[]string{"serve", "--nats-url", web.URL}, app, `http:// is not NATS`},
		{[]string{"agent", "--listen", "127.0.0.1:0", "--nats-url", web.URL}, nil, `http:// is not NATS`},
	} {
		r.check(t)
	}
}

func TestCheckNATSURLs(t *testing.T) {
	for _, ok := range []string{"", "localhost:4222", "n1", "nats://n1:4222,nats://n2:4222, nats://n3:4222", "tls://nats.example.com",
		"ws://127.0.0.1:8080", "wss://a:443,wss://b:443", "nats://service:pw@nats.internal:4222", "[::1]:4222"} {
		if err := checkNATSURLs(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, says := range map[string]string{
		"http://127.0.0.1:8180":                 "http:// is not NATS",
		"nats://n1:4222,http://n2:4222":         `"http://n2:4222": http:// is not NATS`,
		"nats://":                               "names no host",
		"nats://n1:port":                        "the port is not a number",
		"nats://n1:4222,ws://n2:8080":           "ws:// and wss:// URLs go alone",
		"http://service:s3cret@127.0.0.1:8180":  `"http://service:xxxxx@127.0.0.1:8180"`,
		"nats://service:s3cret@n1:port":         `"nats://service:xxxxx@n1:port"`,
		"nats://service:s3cret@n1:4222,ws://n2": `ws:// and wss:// URLs go alone`,
	} {
		err := checkNATSURLs(bad)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: %v, want an error saying %s", bad, err, says)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: the password is in the error: %v", bad, err)
		}
	}
}

// TestNATSPasswordInURLNotShown: a password in --nats-url is not in the
// error of a NATS that cannot be reached.
func TestNATSPasswordInURLNotShown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, errOut, code := runCommand(t, nil, "status", "--nats-url", "nats://service:s3cret@"+closed)
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS at nats://service:xxxxx@"+closed) || strings.Contains(errOut, "s3cret") {
		t.Errorf("exit %d, stderr %q; want 1, the URL shown without its password", code, errOut)
	}
}
