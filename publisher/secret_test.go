package publisher

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const secretText = "s3cr3t-AppSecret/+="

// TestAppNeverPrintsItsSecret: an App printed or logged shows no secret
// (Secret's own printing is tested with it, in package upstream).
func TestAppNeverPrintsItsSecret(t *testing.T) {
	s := NewSecret(secretText)
	app := App{AppID: "wx1", Secret: s, Platform: &Platform{MessageToken: s, EncodingAESKey: s}}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("app", "secret", s, "app", app)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("app", "app", app)
	for _, out := range []string{fmt.Sprintf("%+v", App{AppID: "wx1", Secret: s}), fmt.Sprintf("%+v %#v", app, *app.Platform), buf.String()} {
		if strings.Contains(out, "s3cr3t") {
			t.Errorf("secret printed: %s", out)
		}
	}
}
