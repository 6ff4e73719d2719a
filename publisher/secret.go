package publisher

import "log/slog"

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
