package wechaterr

import "testing"

func TestTokenRejected(t *testing.T) {
	for code, want := range map[int]bool{40001: true, 40014: true, 42001: true, 0: false, 45009: false, 40013: false} {
		if TokenRejected(code) != want {
			t.Errorf("TokenRejected(%d) = %v", code, !want)
		}
	}
}

func TestClass(t *testing.T) {
	for code, want := range map[int]string{0: ClassOK, 40001: ClassToken, 42001: ClassToken, 45009: ClassQuota,
		-1: ClassRetry, 45011: ClassRetry, 40164: ClassConfig, 48001: ClassConfig, 40003: ClassOther} {
		if got := Class(code); got != want {
			t.Errorf("Class(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestRid(t *testing.T) {
	for msg, want := range map[string]string{
		"invalid credential, access_token is invalid or not latest rid: 61725984-6126f6f9-040f19c4": "61725984-6126f6f9-040f19c4",
		"api freq out of limit rid: 0a-1b": "0a-1b",
		"ok":                               "",
		"rid: 61725984-6126f6f9-040f19c4":  "", // no text before: not WeChat's form
		"x rid: 61725984-6126f6f9-040f19c4 hint: [x]": "",
		"x rid: 61725984 6126f6f9":                    "",
		"x rid: ../../etc":                            "",
		"x rid: 61725984-6126F6F9-040f19c4":           "",
		"x rid: 61725984-6126f6f9-040f19c4-0-0-0-0":   "",
		"x rid: 1-2 rid: 61725984-6126f6f9-040f19c4":  "61725984-6126f6f9-040f19c4",
	} {
		got, ok := Rid(msg)
		if got != want || ok != (want != "") {
			t.Errorf("Rid(%q) = %q, %v; want %q", msg, got, ok, want)
		}
	}
}
