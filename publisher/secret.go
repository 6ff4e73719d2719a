package publisher

import "github.com/wxtoken/wxtoken/publisher/internal/upstream"

// Secret holds an AppSecret (or a platform's message token and
// EncodingAESKey) so that it cannot reach a log, an error or an encoder
// by accident: every way of printing it (fmt, slog, encoding/json) prints
// "[REDACTED]". Reveal is the one way to the text, for the call that
// sends it to WeChat; IsZero reports an empty one.
type Secret = upstream.Secret

// NewSecret wraps s.
func NewSecret(s string) Secret { return upstream.NewSecret(s) }
