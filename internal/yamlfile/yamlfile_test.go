package yamlfile

import (
	"strings"
	"testing"
)

type entry struct {
	AppID     string   `yaml:"appid"`
	SecretEnv string   `yaml:"secret_env"`
	Tickets   []string `yaml:"tickets"`
}

type file struct {
	Apps []entry `yaml:"apps"`
}

func TestDecode(t *testing.T) {
	var f file
	err := Decode("apps.yaml", []byte("apps:\n  - appid: wx1\n    secret_env: X\n    tickets: [jsapi]\n  - &b\n    appid: wx2\n  - *b\n"), &f)
	if err != nil || len(f.Apps) != 3 || f.Apps[0].SecretEnv != "X" || f.Apps[0].Tickets[0] != "jsapi" || f.Apps[2].AppID != "wx2" {
		t.Fatalf("%+v, %v", f, err)
	}
	if err := Decode("apps.yaml", nil, &f); err != nil {
		t.Errorf("an empty file: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown key": {"apps:\n  - appid: wx1\n    secret_evn: X\n",
			`apps.yaml:3: unknown key "secret_evn" in apps[0] (did you mean secret_env?); the keys there are appid, secret_env, tickets`},
		"unknown at the top": {"aps:\n  - appid: wx1\n",
			`apps.yaml:1: unknown key "aps" at the top of the file (did you mean apps?); the keys there are apps`},
		"nothing near": {"apps:\n  - appid: wx1\n    colour: red\n",
			`apps.yaml:3: unknown key "colour" in apps[0]; the keys there are appid, secret_env, tickets`},
		"every problem": {"apps:\n  - appid: wx1\n    a: 1\n  - b: 2\n",
			`apps.yaml:3: unknown key "a" in apps[0]`},
		"a list wanted": {"apps: wx1\n",
			`apps.yaml:1: apps must be a list (entries starting with "- ", or [a, b]), not a single value`},
		"keys wanted": {"apps:\n  - wx1\n",
			`apps.yaml:2: apps[0] must be keys and values (key: value), not a single value`},
		"a value wanted": {"apps:\n  - appid: [wx1]\n",
			`apps.yaml:2: apps[0].appid must be a single value, not a list`},
		"the file is a list": {"- appid: wx1\n",
			`apps.yaml:1: the file must be keys and values (key: value), not a list`},
		"under-indented": {"apps:\n  - appid: wx1\n    secret_env: X\n   tickets: [jsapi]\n",
			`apps.yaml:4: not YAML: did not find expected '-' indicator (check the indentation`},
		"at the list's indent": {"apps:\n  - appid: wx1\n  secret_env: X\n",
			`apps.yaml:3: not YAML: did not find expected '-' indicator (check the indentation`},
		"over-indented": {"apps:\n  - appid: wx1\n      secret_env: X\n",
			`apps.yaml:3: not YAML: mapping values are not allowed in this context (check the indentation`},
		"a tab": {"apps:\n\t- appid: wx1\n",
			`apps.yaml:2: not YAML: found character that cannot start any token (YAML indents with spaces, not tabs)`},
		"a tab in an entry": {"apps:\n  - appid: wx1\n\tsecret_env: X\n",
			`apps.yaml:3: not YAML: found a tab character that violates indentation`},
		"twice": {"apps:\n  - appid: wx1\n    appid: wx2\n",
			`apps.yaml:3: mapping key "appid" already defined at line 2`},
	} {
		var f file
		err := Decode("apps.yaml", []byte(tc.yaml), &f)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant %s...", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "yamlfile.") {
			t.Errorf("%s: a Go type in the error: %v", name, err)
		}
	}
	var f file
	err := Decode("apps.yaml", []byte("apps:\n  - appid: wx1\n    a: 1\n  - b: 2\n"), &f)
	if err == nil || !strings.Contains(err.Error(), `; apps.yaml:4: unknown key "b" in apps[1]`) {
		t.Errorf("both problems: %v", err)
	}
	// Text of no file says "line N".
	if err := Decode("", []byte("apps:\n  - apid: wx1\n"), &f); err == nil || !strings.HasPrefix(err.Error(), `line 2: unknown key "apid"`) {
		t.Errorf("no file: %v", err)
	}
}

// TestDecodeErrorsQuoteNoValue: a value may be a secret; no error shows one.
func TestDecodeErrorsQuoteNoValue(t *testing.T) {
	for _, doc := range []string{
		"apps:\n  - appid: s3cr3t-value\n    secret_env: [s3cr3t-value]\n",
		"apps: s3cr3t-value\n",
		"apps:\n  - appid: wx1\n    secret_env: \"s3cr3t-value\n",
	} {
		var f file
		if err := Decode("apps.yaml", []byte(doc), &f); err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: %v", doc, err)
		}
	}
}

// FuzzDecode: any text gets a decoded value or an error, never a panic.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"apps:\n  - appid: wx1\n    secret_env: X\n    tickets: [jsapi]\n",
		"apps:\n  - &a\n    appid: wx1\n  - *a\n  - <<: *a\n    secret_env: Y\n",
		"apps:\n  - appid: wx1\n   tickets: [a]\n",
		"apps: [\n", "- a\n", "apps: {a: 1}\n", "? [a]\n: b\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v file
		Decode("f.yaml", data, &v)
	})
}

// TestDecodeMergeKeys: what a merge key brings in is checked like the
// entry's own keys.
func TestDecodeMergeKeys(t *testing.T) {
	var f file
	if err := Decode("", []byte("d: &d {secret_env: X}\n"), &f); err == nil {
		t.Error("an unknown key at the top accepted")
	}
	doc := "apps:\n  - &d\n    appid: wx1\n    secret_env: X\n  - <<: [*d]\n    appid: wx2\n"
	if err := Decode("", []byte(doc), &f); err != nil || f.Apps[1].SecretEnv != "X" || f.Apps[1].AppID != "wx2" {
		t.Errorf("%+v, %v", f, err)
	}
	doc = "apps:\n  - &d\n    appid: wx1\n    colour: red\n  - <<: *d\n"
	if err := Decode("", []byte(doc), &f); err == nil || !strings.Contains(err.Error(), `line 4: unknown key "colour" in apps[0]`) {
		t.Errorf("%v", err)
	}
}
