package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestAgentBadConfigurationExits2: an auth file or a TLS key pair that
// does not load is a configuration the agent cannot run with: exit 2, the
// line of the problem named, before anything starts.
func TestAgentBadConfigurationExits2(t *testing.T) {
	dir := t.TempDir()
	auth := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(auth, []byte("clients:\n  - name: shop\n    token: 0123456789abcdef\n    key: ['*']\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range []refused{
		{[]string{"agent", "--listen", "127.0.0.1:0", "--auth-file", auth}, nil, auth + `:4: unknown key "key" in clients[0] (did you mean keys?)`},
		{[]string{"agent", "--listen", "127.0.0.1:0", "--listen-tls-cert", filepath.Join(dir, "cert.pem"), "--listen-tls-key", filepath.Join(dir, "key.pem")}, nil, "--listen-tls-cert: open"},
		{[]string{"agent", "--listen", "127.0.0.1:0", "--wechat-base-url", "https://api.weixin.qq.com,https://user:pw@api2.weixin.qq.com"}, nil,
			`--wechat-base-url: entry 2: "https://user:xxxxx@api2.weixin.qq.com" must be a scheme, a host and at most a path`},
		{[]string{"agent", "--listen", "127.0.0.1:0", "--wecom-base-url", "https://qyapi.weixin.qq.com,https://qyapi2.example"}, nil,
			"--wecom-base-url: give WeCom's one base URL, such as https://qyapi.weixin.qq.com"},
		{[]string{"agent", "--listen", "127.0.0.1:0", "--wechat-base-recheck", "0s"}, nil, "--wechat-base-recheck 0s: give a positive duration such as 10m"},
	} {
		r.check(t)
	}
}
