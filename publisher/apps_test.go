package publisher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
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

func TestParseAppsKinds(t *testing.T) {
	data := `
apps:
  - appid: wx000000000000000a
    secret: a
    tickets: [jsapi, wx_card]
  - appid: wx000000000000000b
    secret: b
    token_api: stable
`
	apps, err := ParseApps([]byte(data), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if a := apps[0]; a.TokenAPI != TokenAPIClassic || len(a.Tickets) != 2 || a.Tickets[0] != TicketJSAPI || a.Tickets[1] != TicketWxCard {
		t.Errorf("first app %+v", a)
	}
	if b := apps[1]; b.TokenAPI != TokenAPIStable || len(b.Tickets) != 0 {
		t.Errorf("second app %+v", b)
	}
	app, _, err := AppFromEnv(env(map[string]string{"WECHAT_APPID": "wx000000000000000a", "WECHAT_APPSECRET": "s", "WECHAT_TOKEN_API": "stable"}))
	if err != nil || app.TokenAPI != TokenAPIStable {
		t.Errorf("from the environment: %+v, %v", app, err)
	}
	if _, _, err := AppFromEnv(env(map[string]string{"WECHAT_APPID": "wx000000000000000a", "WECHAT_APPSECRET": "s", "WECHAT_TOKEN_API": "x"})); err == nil ||
		!strings.Contains(err.Error(), "WECHAT_TOKEN_API") {
		t.Errorf("a bad WECHAT_TOKEN_API: %v", err)
	}
	nc, _ := natstest.JetStream(t)
	r, err := New(nc, Config{Apps: apps})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	parents := map[string]string{}
	r.creds.Each(func(v loop.Value) {
		keys = append(keys, v.Key)
		parents[v.Key] = v.Parent
	})
	if got := strings.Join(keys, " "); got != "wx000000000000000a wx000000000000000a.jsapi_ticket wx000000000000000a.wx_card_ticket wx000000000000000b" {
		t.Errorf("credentials %s", got)
	}
	if parents["wx000000000000000a.jsapi_ticket"] != "wx000000000000000a" {
		t.Error("a ticket's parent is not its app's token")
	}
}

func TestParseAppsErrors(t *testing.T) {
	tests := map[string]struct{ yaml, inErr string }{
		"empty":        {``, "apps"},
		"no list":      {`apps: []`, "no apps"},
		"typo":         {"apps:\n  - appid: wx000000000000000a\n    secret_evn: X", "secret_evn"},
		"no secret":    {"apps:\n  - appid: wx000000000000000a", "exactly one"},
		"two secrets":  {"apps:\n  - appid: wx000000000000000a\n    secret: a\n    secret_env: B", "exactly one"},
		"unset env":    {"apps:\n  - appid: wx000000000000000a\n    secret_env: NOT_SET", "NOT_SET"},
		"missing file": {"apps:\n  - appid: wx000000000000000a\n    secret_file: /nonexistent/wx", "/nonexistent/wx"},
		"bad appid":    {"apps:\n  - appid: wx.1\n    secret: a", "wx.1"},
		"duplicate":    {"apps:\n  - appid: wx000000000000000a\n    secret: a\n  - appid: wx000000000000000a\n    secret: b", "twice"},
		"not yaml":     {"apps: [", "line 1: not YAML"},
		"token api":    {"apps:\n  - appid: wx000000000000000a\n    secret: a\n    token_api: stabel", `app wx000000000000000a: token_api "stabel" is not`},
		"ticket":       {"apps:\n  - appid: wx000000000000000a\n    secret: a\n    tickets: [jsapi, agent]", `app wx000000000000000a: tickets: "agent" is not`},
		"ticket twice": {"apps:\n  - appid: wx000000000000000a\n    secret: a\n    tickets: [jsapi, jsapi]", `app wx000000000000000a: tickets: "jsapi" is listed twice`},
		"tickets type": {"apps:\n  - appid: wx000000000000000a\n    secret: a\n    tickets: jsapi", "tickets"},
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
	_, err := ParseApps([]byte("apps:\n  - appid: wx000000000000000a\n    secret: s3cr3t\n    secret_env: X"), env(nil))
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
		"secret":      {map[string]string{"WECHAT_APPID": "wx000000000000000a", "WECHAT_APPSECRET": "s"}, true, "s", ""},
		"secret file": {map[string]string{"WECHAT_APPID": "wx000000000000000a", "WECHAT_APPSECRET_FILE": file}, true, "from-file", ""},
		"both":        {map[string]string{"WECHAT_APPID": "wx000000000000000a", "WECHAT_APPSECRET": "s", "WECHAT_APPSECRET_FILE": file}, true, "", "not both"},
		"neither":     {map[string]string{"WECHAT_APPID": "wx000000000000000a"}, true, "", "WECHAT_APPSECRET"},
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

const testAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

// The platform of these tests, and an account that authorized it.
const component, authorizer = "wx00000000000c0a01", "wx00000000000a0001"

// TestParsePlatforms: a platform takes its secret, message token and
// EncodingAESKey each from the environment, a file or the file itself; its
// token is the component token under the component appid.
func TestParsePlatforms(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "aes")
	os.WriteFile(keyFile, []byte(testAESKey+"\n"), 0o600)
	apps, err := ParseApps([]byte(`
apps:
  - appid: wx000000000000000a
    secret: a
platforms:
  - component_appid: wx00000000000c0a01
    secret_env: COMPONENT_SECRET
    message_token: msg-token
    encoding_aes_key_file: `+keyFile+`
`), env(map[string]string{"COMPONENT_SECRET": "component-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 2 || apps[1].Platform == nil {
		t.Fatalf("apps %+v: want the app and the platform", apps)
	}
	p := apps[1]
	if p.Key() != "wx00000000000c0a01" || p.Secret.Reveal() != "component-secret" ||
		p.Platform.MessageToken.Reveal() != "msg-token" || p.Platform.EncodingAESKey.Reveal() != testAESKey {
		t.Errorf("platform %s: a secret is wrong", p.Key())
	}
	nc, _ := natstest.JetStream(t)
	r, err := New(nc, Config{Apps: apps})
	if err != nil {
		t.Fatal(err)
	}
	var api string
	r.creds.Each(func(v loop.Value) {
		if v.Key == "wx00000000000c0a01" {
			api = v.API
		}
	})
	if api != "component_token" {
		t.Errorf("the platform's credential is fetched with %q, want its component token", api)
	}

	// A file of platforms alone is an apps file.
	if _, err := ParseApps([]byte("platforms:\n  - component_appid: wx000000000000000a\n    secret: s\n    message_token: t\n    encoding_aes_key: "+testAESKey), env(nil)); err != nil {
		t.Errorf("platforms alone: %v", err)
	}
}

func TestParsePlatformErrors(t *testing.T) {
	const ok = "    secret: s\n    message_token: t\n    encoding_aes_key: " + testAESKey
	tests := map[string]struct{ yaml, inErr string }{
		"no token":     {"platforms:\n  - component_appid: wx000000000000000a\n    secret: s\n    encoding_aes_key: " + testAESKey, "message_token"},
		"short key":    {"platforms:\n  - component_appid: wx000000000000000a\n    secret: s\n    message_token: t\n    encoding_aes_key: tooshort", "43-character"},
		"no key":       {"platforms:\n  - component_appid: wx000000000000000a\n    secret: s\n    message_token: t", "encoding_aes_key"},
		"two tokens":   {"platforms:\n  - component_appid: wx000000000000000a\n" + ok + "\n    message_token_env: X", "exactly one of message_token_env"},
		"bad appid":    {"platforms:\n  - component_appid: wx-1\n" + ok, "component_appid"},
		"as an app":    {"apps:\n  - appid: wx000000000000000a\n    secret: a\nplatforms:\n  - component_appid: wx000000000000000a\n" + ok, "twice"},
		"unknown":      {"platforms:\n  - component_appid: wx000000000000000a\n" + ok + "\n    tickets: [jsapi]", "tickets"},
		"unset secret": {"platforms:\n  - component_appid: wx000000000000000a\n    secret_env: NOPE\n    message_token: t\n    encoding_aes_key: " + testAESKey, "NOPE"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseApps([]byte(tc.yaml), env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.inErr)
			}
			if err != nil && strings.Contains(err.Error(), testAESKey) {
				t.Errorf("the error quotes the EncodingAESKey: %v", err)
			}
		})
	}
}

// TestMalformedAppIDRefusedAtLoad: an appid WeChat cannot have (17
// characters, say) is refused when the apps file or the environment is
// read, with the rule, instead of being answered 40013 at the first fetch.
func TestMalformedAppIDRefusedAtLoad(t *testing.T) {
	const short = "wx123456789012345" // 17 characters
	const rule = `a WeChat appid is 18 characters, "wx" and 16 lowercase letters or digits`
	for name, yaml := range map[string]string{
		"app":      "apps:\n  - appid: " + short + "\n    secret: s",
		"platform": "platforms:\n  - component_appid: " + short + "\n    secret: s\n    message_token: t\n    encoding_aes_key: " + testAESKey,
	} {
		_, err := ParseApps([]byte(yaml), env(nil))
		if err == nil || !strings.Contains(err.Error(), short) || !strings.Contains(err.Error(), rule) {
			t.Errorf("%s: %v, want the appid refused with the rule", name, err)
		}
	}
	_, _, err := AppFromEnv(env(map[string]string{"WECHAT_APPID": short, "WECHAT_APPSECRET": "s"}))
	if err == nil || !strings.Contains(err.Error(), "WECHAT_APPID") || !strings.Contains(err.Error(), rule) {
		t.Errorf("WECHAT_APPID: %v, want the appid refused with the rule", err)
	}
	// WeCom's corpids are not appids.
	if _, err := ParseApps([]byte("apps:\n  - corpid: ww1234567890abcdef\n    agent: \"1000002\"\n    secret: s"), env(nil)); err != nil {
		t.Errorf("a WeCom app: %v", err)
	}
}

// TestAppsFileErrorsNameTheLine: a mistake in the apps file is reported at
// its line, as file:line; an unknown key is listed against the valid keys,
// with no Go type in sight.
func TestAppsFileErrorsNameTheLine(t *testing.T) {
	const good = "apps:\n  - appid: wx000000000000000a\n    secret: a\n"
	for name, tc := range map[string]struct{ yaml, want string }{
		"typo": {good + "  - appid: wx000000000000000b\n    secret_evn: X\n",
			`apps.yaml:5: unknown key "secret_evn" in apps[1] (did you mean secret_env?); the keys there are agent, appid, corpid, secret, secret_env, secret_file, tickets, token_api`},
		"platform typo": {"platforms:\n  - component_appid: wx000000000000000a\n    secret: s\n    message_token: t\n    encoding_aes_key: " + testAESKey + "\n    aes_key: x\n",
			`apps.yaml:6: unknown key "aes_key" in platforms[0]; the keys there are component_appid, encoding_aes_key, encoding_aes_key_env, encoding_aes_key_file, message_token, message_token_env, message_token_file, secret, secret_env, secret_file`},
		"bad indent": {good + "  - appid: wx000000000000000b\n    secret: b\n   tickets: [jsapi]\n",
			`apps.yaml:6: not YAML: did not find expected '-' indicator (check the indentation`},
		"an app's mistake": {good + "  - appid: wx000000000000000b\n    secret: b\n    token_api: stabel\n",
			`apps.yaml:4: apps[1]: app wx000000000000000b: token_api "stabel" is not "token" or "stable"`},
		"tickets not a list": {good + "    tickets: jsapi\n",
			`apps.yaml:4: apps[0].tickets must be a list`},
	} {
		path := filepath.Join(t.TempDir(), "apps.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadAppsFile(path, env(nil))
		if want := "publisher: apps file " + filepath.Dir(path) + "/" + tc.want; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v\nwant %s...", name, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "publisher.") || strings.Contains(err.Error(), "Entry")) {
			t.Errorf("%s: a Go type in the error: %v", name, err)
		}
	}
}
func TestWeComAppsInTheAppsFile(t *testing.T) {
	apps, err := ParseApps([]byte(`
apps:
  - corpid: ww1234567890abcdef
    agent: "1000002"
    secret: s
    tickets: [jsapi, agent_config]
  - corpid: ww1234567890abcdef
    agent: contacts
    secret: t
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if apps[0].Key() != "ww1234567890abcdef-1000002" || apps[1].Key() != "ww1234567890abcdef-contacts" {
		t.Errorf("keys %s %s", apps[0].Key(), apps[1].Key())
	}
	for name, tc := range map[string]struct{ yaml, inErr string }{
		"no agent":      {"apps:\n  - corpid: ww1\n    secret: s", "needs agent"},
		"both ids":      {"apps:\n  - corpid: ww1\n    appid: wx000000000000000a\n    agent: a\n    secret: s", "not both"},
		"agent of app":  {"apps:\n  - appid: wx000000000000000a\n    agent: a\n    secret: s", "agent belongs to a WeCom app"},
		"stable wecom":  {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n    token_api: stable", "WeCom has gettoken alone"},
		"card on wecom": {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n    tickets: [wx_card]", `WeCom app ww1-a: tickets: "wx_card" is not`},
		"agent_config":  {"apps:\n  - appid: wx000000000000000a\n    secret: s\n    tickets: [agent_config]", `app wx000000000000000a: tickets: "agent_config" is not`},
		"dash":          {"apps:\n  - corpid: ww-1\n    agent: a\n    secret: s", "not a corp id"},
		"appid dash":    {"apps:\n  - appid: ww1-2\n    secret: s", `has a "-"`},
		"same twice":    {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n  - corpid: ww1\n    agent: a\n    secret: t", "twice"},
	} {
		if _, err := ParseApps([]byte(tc.yaml), env(nil)); err == nil || !strings.Contains(err.Error(), tc.inErr) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.inErr)
		}
	}
}
