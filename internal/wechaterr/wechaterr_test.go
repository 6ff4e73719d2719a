package wechaterr

import "testing"

func TestTokenRejected(t *testing.T) {
	for code, want := range map[int]bool{40001: true, 40014: true, 42001: true, 0: false, 45009: false, 40013: false} {
		if TokenRejected(code) != want {
			t.Errorf("TokenRejected(%d) = %v", code, !want)
		}
	}
}
