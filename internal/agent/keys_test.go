package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// logRecord is what a test reads of a log line: its level, message and
// attributes as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// recordingHandler sends every record logged to a channel, for a test to
// wait on a line.
type recordingHandler struct{ records chan logRecord }

func (h recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h recordingHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	select {
	case h.records <- rec:
	default: // a test that stopped reading loses nothing it waits for
	}
	return nil
}

// awaitLog returns the first record logged that match accepts, failing the
// test if ctx ends first. Records before it are passed to seen.
func awaitLog(t *testing.T, ctx context.Context, records <-chan logRecord, what string, match func(logRecord) bool, seen func(logRecord)) logRecord {
	t.Helper()
	for {
		select {
		case r := <-records:
			if match(r) {
				return r
			}
			seen(r)
		case <-ctx.Done():
			t.Fatalf("no log line %s", what)
			return logRecord{}
		}
	}
}

func get(t *testing.T, ctx context.Context, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestAKeyOfKeysThatNeverAppearsIsWarnedAbout: --keys names a key the
// bucket does not have (a typo, an app the refresher does not keep). The
// agent warns, naming it and saying it is not in the bucket, once the
// others had time to arrive; /readyz says 503 as before, and the agent
// serves the key, and is ready, once it appears.
func TestAKeyOfKeysThatNeverAppearsIsWarnedAbout(t *testing.T) {
	const kept, missing = "wxa000000000000001", "wxa00000000000000f"
	ctx := testenv.Context(t, 20*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, wechat := testenv.WeChat(t, fakewechat.Config{ExpiresIn: time.Hour})
	apps := testenv.Apps(fake, kept)
	refresher := testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: wechat})
	testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, nc), kept))

	records := make(chan logRecord, 256)
	base, _ := url.Parse(wechat)
	a, err := New(Config{Conn: nc, Keys: []string{kept, missing}, WeChatBase: base, WeComBase: base,
		Logger: slog.New(recordingHandler{records})})
	if err != nil {
		t.Fatal(err)
	}
	a.missingKeyWait = 200 * time.Millisecond
	a.Run()
	t.Cleanup(func() { a.Close() })
	web := httptest.NewServer(a.Server().Handler)
	t.Cleanup(web.Close)

	warned := awaitLog(t, ctx, records, "warning that "+missing+" is not in the bucket",
		func(r logRecord) bool { return r.level == slog.LevelWarn && r.attrs["key"] == missing },
		func(r logRecord) {
			if r.level >= slog.LevelWarn {
				t.Errorf("logged %s %q %v, before the warning of the missing key", r.level, r.msg, r.attrs)
			}
		})
	if !strings.Contains(warned.msg, "not in the bucket") {
		t.Errorf("the warning of %s says %q, want it to say the key is not in the bucket", missing, warned.msg)
	}
	if code, body := get(t, ctx, web.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no value yet for "+missing) {
		t.Errorf("/readyz with %s missing = %d %q, want 503 naming it", missing, code, body)
	}

	// The refresher keeps it from now on: the agent holds it and is ready.
	if err := refresher.SetApps(append(apps, testenv.Apps(fake, missing)...)); err != nil {
		t.Fatal(err)
	}
	awaitLog(t, ctx, records, `"agent ready"`, func(r logRecord) bool { return r.msg == "agent ready" }, func(r logRecord) {
		if r.level >= slog.LevelWarn {
			t.Errorf("logged %s %q %v while the key appeared", r.level, r.msg, r.attrs)
		}
	})
	if code, body := get(t, ctx, web.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz once %s is held = %d %q, want 200", missing, code, body)
	}
}
