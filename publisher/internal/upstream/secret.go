package upstream

import (
	"errors"
	"log/slog"
	"net/url"
	"strings"
)

// Secret holds an AppSecret so that it cannot reach a log, an error or an
// encoder by accident: every way of printing it prints "[REDACTED]", and
// Reveal is the one way to the text.
//
// It is a pointer in a struct rather than a string type on purpose: fmt
// cannot call String on a value in an unexported field, so a string-typed
// secret inside a struct printed with %+v would come out in clear. A pointer
// comes out as an address.
type Secret struct {
	p *string
}

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{p: &s} }

// Reveal returns the secret's text. Call it only where the text is sent to
// WeChat.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.Reveal() == "" }

const redacted = "[REDACTED]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Scrub replaces every occurrence of s, plain or URL-encoded, in text.
func Scrub(text, s string) string {
	if s == "" {
		return text
	}
	text = strings.ReplaceAll(text, s, redacted)
	return strings.ReplaceAll(text, url.QueryEscape(s), redacted)
}

// ScrubErrMsg removes s from the errmsg of an *Error: WeChat is not known
// to echo a secret or token back, but a proxy on the way might, and the
// errmsg travels on to logs, failure events and refresh replies.
func ScrubErrMsg(err error, s string) error {
	var e *Error
	if errors.As(err, &e) {
		e.ErrMsg = Scrub(e.ErrMsg, s)
	}
	return err
}

// Scrubber removes every secret it holds, plain or URL-encoded, from a
// text. It guards the one thing no type can keep a secret out of: the
// text of a panic.
type Scrubber []string

// Scrub returns text without the secrets.
func (s Scrubber) Scrub(text string) string {
	for _, secret := range s {
		text = Scrub(text, secret)
	}
	return text
}
