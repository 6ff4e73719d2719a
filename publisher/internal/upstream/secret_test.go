package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
)

const secretText = "s3cr3t-AppSecret/+="

func TestSecretNeverPrints(t *testing.T) {
	s := NewSecret(secretText)
	type holder struct {
		AppID  string
		Secret Secret
		secret Secret // unexported: fmt cannot call String on it
	}
	h := holder{AppID: "wx1", Secret: s, secret: s}
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	logger.Info("app", "secret", s, "holder", h)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("app", "secret", s, "holder", h)
	js, _ := json.Marshal(h)
	outputs := []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q", s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", h, h, h), fmt.Sprintf("%+v", &h), fmt.Sprintf("%v", []Secret{s}),
		string(js), buf.String(),
	}
	for _, out := range outputs {
		if strings.Contains(out, "s3cr3t") {
			t.Errorf("secret printed: %s", out)
		}
	}
	if s.Reveal() != secretText {
		t.Errorf("Reveal = %q", s.Reveal())
	}
	if !(Secret{}).IsZero() || NewSecret("").Reveal() != "" || s.IsZero() {
		t.Error("IsZero")
	}
}

func TestScrubberRemovesEncodedSecrets(t *testing.T) {
	s := Scrubber{"other", secretText}
	// A panic that prints a request URL holds the secret URL-encoded.
	for _, text := range []string{
		"GET /cgi-bin/token?secret=" + url.QueryEscape(secretText), // only encoded
		"secret " + secretText + " in " + url.QueryEscape(secretText),
	} {
		got := s.Scrub(text)
		if strings.Contains(got, secretText) || strings.Contains(got, url.QueryEscape(secretText)) {
			t.Errorf("Scrub(%q) = %q, still holds the secret", text, got)
		}
	}
}
