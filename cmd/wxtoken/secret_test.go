package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretSetRefusesASecretOnTheCommandLine: a second argument, which
// may well be the secret, is refused without being quoted back; so are a
// missing key, a bad one and an empty secret file, before any connection.
func TestSecretSetRefusesASecretOnTheCommandLine(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	_, errOut, code := runCommand(t, nil, "secret", "set", "wx1234567890abcdef", secret)
	if code != 2 || !strings.Contains(errOut, "never taken from the command line") || strings.Contains(errOut, secret) {
		t.Errorf("a secret as an argument: exit %d, stderr %q; want 2, refused, the secret not quoted", code, errOut)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spaced := filepath.Join(t.TempDir(), "spaced")
	if err := os.WriteFile(spaced, []byte("two words\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range []refused{
		{args: []string{"secret", "set"}, want: "need the KEY"},
		{args: []string{"secret", "set", "wx 1"}, want: "appid"},
		{args: []string{"secret", "set", "wx1234567890abcdef", "--file", empty}, want: "the secret is empty"},
		{args: []string{"secret", "set", "wx1234567890abcdef", "--file", spaced}, want: "one line without spaces"},
		{args: []string{"secret"}, want: "need a subcommand: set"},
	} {
		r.check(t)
	}
}

// TestSecretSetSaysWhatItsStdinIs: a stdin that is a device (here
// /dev/null, as `< /dev/null` or a service manager gives it) is refused as
// a device, not called a terminal, and says how to give the secret; a pipe
// gives it.
func TestSecretSetSaysWhatItsStdinIs(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	_, err = readNewSecret("", devNull)
	if err == nil || !strings.HasPrefix(err.Error(), "stdin is a device (a terminal, which would show the secret as it is typed, or /dev/null), not a pipe or a file: ") ||
		!strings.Contains(err.Error(), "give --file") {
		t.Errorf("stdin /dev/null: %v, want it refused as a device, naming --file", err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.WriteString("0123456789abcdef0123456789abcdef\n")
		w.Close()
	}()
	if secret, err := readNewSecret("", r); err != nil || string(secret) != "0123456789abcdef0123456789abcdef" {
		t.Errorf("a secret piped in: %q, %v", secret, err)
	}
}
