package main

import (
	"os"
	"path/filepath"
	"testing"
)

// embeddedArgs keep a serve that a test expects to be refused, but that
// starts, off the default port and out of the working directory.
func embeddedArgs(t *testing.T) []string {
	return []string{"--nats-listen", "127.0.0.1:-1", "--data-dir", t.TempDir()}
}

// TestServeRefusesAZeroItWouldReplace: a zero that the refresher would
// silently take for its default (--upstream-rate 0 became 50) is refused,
// exit 2, with what to give instead.
func TestServeRefusesAZeroItWouldReplace(t *testing.T) {
	for _, r := range []refused{
		{[]string{"--upstream-rate", "0"}, nil, "--upstream-rate 0: give at least 0.01 (calls per second; 0.01 is one every 100 s)"},
		{nil, map[string]string{"WXTOKEN_UPSTREAM_RATE": "0"}, "--upstream-rate 0: give at least 0.01"},
		{[]string{"--refresh-before", "0s"}, nil, "--refresh-before 0: give a positive duration such as 10m"},
		{[]string{"--min-force-interval", "0"}, nil, "--min-force-interval 0: give a positive duration such as 30s"},
		{[]string{"--lease-ttl", "0s"}, nil, "--lease-ttl 0: give a duration of at least 1s, such as 10s"},
		{[]string{"--upstream-timeout", "0s"}, nil, "--upstream-timeout 0: give a positive duration such as 5s"},
		{[]string{"--wechat-base-recheck", "0s"}, nil, "--wechat-base-recheck 0: give a positive duration such as 10m"},
		{[]string{"--replicas", "0"}, nil, "--replicas 0: give 1, or 3 in a 3-node cluster"},
		{[]string{"--history", "0"}, nil, "--history 0: give a number from 1 to 64"},
	} {
		r.args = append(append([]string{"serve", "--demo"}, embeddedArgs(t)...), r.args...)
		r.check(t)
	}
}

// TestServeBadConfigurationExits2: every command line or configuration
// serve cannot run with exits 2 before anything starts: an address with
// no port, an apps file that does not load.
func TestServeBadConfigurationExits2(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	badKey := write("bad-key.yaml", "apps:\n  - appid: wx1234567890abcdef\n    secret_evn: X\n")
	shortID := write("short-id.yaml", "apps:\n  - appid: wx123456789012345\n    secret: s\n")
	platform := write("platform.yaml", "platforms:\n  - component_appid: wx1234567890abcdef\n    secret: s\n    message_token: t\n"+
		"    encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\n")
	serve := func(args ...string) []string {
		return append(append([]string{"serve", "--wechat-base-url", "http://127.0.0.1:1"}, embeddedArgs(t)...), args...)
	}
	app := map[string]string{"WECHAT_APPID": "wx1234567890abcdef", "WECHAT_APPSECRET": "s"}
	for _, r := range []refused{
		{serve("--http-addr", "9090"), app, `--http-addr "9090": write host:port, such as 127.0.0.1:9090, or :9090 for every interface`},
		{serve("--pprof"), app, "--pprof serves the profiles on --http-addr: give --http-addr too"},
		{serve("--apps", platform, "--callback-addr", "8090"), nil, `--callback-addr "8090": write host:port, such as 127.0.0.1:8090`},
		{[]string{"serve", "--nats-listen", "4222", "--data-dir", dir}, app, `--nats-listen "4222": write host:port, such as 127.0.0.1:4222`},
		{serve("--apps", badKey), nil, badKey + `:3: unknown key "secret_evn" in apps[0] (did you mean secret_env?)`},
		{serve("--apps", shortID), nil, `appid "wx123456789012345" has 17 characters`},
		{serve("--apps", filepath.Join(dir, "missing.yaml")), nil, "missing.yaml: no such file or directory: give --apps (WXTOKEN_APPS) the path of the apps file"},
		{serve("apps.yaml"), app, `unexpected argument "apps.yaml": serve takes flags only, such as --apps FILE (see wxtoken serve --help)`},
		{serve(), map[string]string{"WECHAT_APPID": "wx123456789012345", "WECHAT_APPSECRET": "s"}, `WECHAT_APPID: appid "wx123456789012345" has 17 characters`},
		{[]string{"serve", "--wechat-base-url", "https://api.weixin.qq.com,ftp://api2.weixin.qq.com", "--nats-listen", "127.0.0.1:-1", "--data-dir", dir}, app,
			`wechat-base-url: entry 2: "ftp://api2.weixin.qq.com" is not an http(s) URL`},
		{[]string{"serve", "--wechat-base-url", "https://api.weixin.qq.com,", "--nats-listen", "127.0.0.1:-1", "--data-dir", dir}, app,
			`wechat-base-url: entry 2 of "https://api.weixin.qq.com," is empty`},
		{[]string{"serve", "--wechat-base-url", "https://api.weixin.qq.com", "--wechat-base-recheck", "-1m", "--nats-listen", "127.0.0.1:-1", "--data-dir", dir}, app,
			"wechat-base-recheck -1m0s is negative"},
	} {
		r.check(t)
	}
}
