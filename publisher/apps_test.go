package publisher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseApps(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "wx_b")
	os.WriteFile(secretFile, []byte("secret-b\n"), 0o600)
	data := `
apps:
  - appid: wx000000000000000a
    secret_env: WX_A_SECRET
  - appid: wx000000000000000b
    secret_file: ` + secretFile + `
  - appid: wx000000000000000c
    secret: secret-c
`
	apps, err := ParseApps([]byte(data), env(map[string]string{"WX_A_SECRET": "secret-a"}))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"wx000000000000000a": "secret-a", "wx000000000000000b": "secret-b", "wx000000000000000c": "secret-c"}
	if len(apps) != len(want) {
		t.Fatalf("%d apps", len(apps))
	}
	for _, a := range apps {
		if want[a.AppID] != a.Secret.Reveal() {
			t.Errorf("%s: wrong secret", a.AppID)
		}
	}
}

func TestParseAppsErrors(t *testing.T) {
	tests := map[string]struct{ yaml, inErr string }{
		"empty":        {``, "apps"},
		"no list":      {`apps: []`, "no apps"},
		"typo":         {"apps:\n  - appid: wx1\n    secret_evn: X", "secret_evn"},
		"no secret":    {"apps:\n  - appid: wx1", "exactly one"},
		"two secrets":  {"apps:\n  - appid: wx1\n    secret: a\n    secret_env: B", "exactly one"},
		"unset env":    {"apps:\n  - appid: wx1\n    secret_env: NOT_SET", "NOT_SET"},
		"missing file": {"apps:\n  - appid: wx1\n    secret_file: /nonexistent/wx", "/nonexistent/wx"},
		"bad appid":    {"apps:\n  - appid: wx.1\n    secret: a", "wx.1"},
		"duplicate":    {"apps:\n  - appid: wx1\n    secret: a\n  - appid: wx1\n    secret: b", "twice"},
		"not yaml":     {"apps: [", "not a valid apps file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseApps([]byte(tc.yaml), env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.inErr)
			}
		})
	}
	// An error about an app never quotes its secret.
	_, err := ParseApps([]byte("apps:\n  - appid: wx1\n    secret: s3cr3t\n    secret_env: X"), env(nil))
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error %v", err)
	}
}

func TestAppFromEnv(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	os.WriteFile(file, []byte("from-file\n"), 0o600)
	for name, tc := range map[string]struct {
		env    map[string]string
		ok     bool
		secret string
		inErr  string
	}{
		"unset":       {map[string]string{}, false, "", ""},
		"secret":      {map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET": "s"}, true, "s", ""},
		"secret file": {map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET_FILE": file}, true, "from-file", ""},
		"both":        {map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET": "s", "WECHAT_APPSECRET_FILE": file}, true, "", "not both"},
		"neither":     {map[string]string{"WECHAT_APPID": "wx1"}, true, "", "WECHAT_APPSECRET"},
		"bad appid":   {map[string]string{"WECHAT_APPID": "wx 1", "WECHAT_APPSECRET": "s"}, true, "", "WECHAT_APPID"},
	} {
		t.Run(name, func(t *testing.T) {
			app, ok, err := AppFromEnv(env(tc.env))
			if ok != tc.ok {
				t.Errorf("ok = %v", ok)
			}
			if tc.inErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.inErr) {
					t.Errorf("error %v, want one saying %q", err, tc.inErr)
				}
				return
			}
			if err != nil || app.Secret.Reveal() != tc.secret {
				t.Errorf("app %v, err %v", app, err)
			}
		})
	}
}
