package publisher

import (
	"log/slog"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
)

// TestSetAppsRefusesWhatNewRefuses: a reload with apps that New would
// refuse changes nothing.
func TestSetAppsRefusesWhatNewRefuses(t *testing.T) {
	nc, _ := natstest.JetStream(t)
	running := []App{{AppID: "wx1", Secret: NewSecret("s1")}}
	// The secret changed below is probed before it is used.
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp("wx1", "s1-new")
	srv := httptest.NewServer(fake)
	defer srv.Close()
	logs := &logLines{}
	r, err := New(nc, Config{Apps: running, UpstreamURL: srv.URL, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	keys := func() string {
		var keys []string
		r.creds.Each(func(v loop.Value) { keys = append(keys, v.Key) })
		return strings.Join(keys, " ")
	}
	for _, tc := range []struct {
		name string
		apps []App
		want string
	}{
		{"none", nil, "no apps"},
		{"twice", []App{{AppID: "wx1", Secret: NewSecret("s1")}, {AppID: "wx1", Secret: NewSecret("s2")}}, "listed twice"},
		{"no secret", []App{{AppID: "wx2"}}, "no secret"},
		{"bad appid", []App{{AppID: "wx 2", Secret: NewSecret("s")}}, "appid"},
		// The platform bucket is opened at start, when there is a platform.
		{"first platform", []App{{AppID: "wx1", Secret: NewSecret("s1")}, {AppID: "wxc", Secret: NewSecret("s"),
			Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}}, "restart"},
	} {
		if err := r.SetApps(tc.apps); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
		if got := keys(); got != "wx1" || len(r.apps.configured) != 1 || r.apps.configured[0].Secret.Reveal() != "s1" || logs.has(whyReload) {
			t.Errorf("%s: the running apps changed: %s", tc.name, got)
		}
	}
	if err := r.SetApps([]App{{AppID: "wx1", Secret: NewSecret("s1-new")}, {AppID: "wx2", Secret: NewSecret("s2")}}); err != nil {
		t.Fatal(err)
	}
	// wx1 stays, with its state (not added again), and takes its new
	// secret (changed); wx2 comes.
	if got := keys(); got != "wx1 wx2" || !logs.has(whyReload+" apps=2 added=wx2 removed= changed=wx1") {
		t.Errorf("a reload did not keep the app's state with its new secret, or did not add the new app: %s, %q", got, logs.lines)
	}
	// The old secret is a prefix of the new: scrubbing it first would
	// leave "-new" behind.
	if got := r.apps.secrets.scrubber().Scrub("s1 s1-new s2"); got != "[REDACTED] [REDACTED] [REDACTED]" {
		t.Errorf("scrubbed %q: old and new secrets are not all scrubbed", got)
	}
}

// TestReloadLineAsDocumented: the line a reload logs has the fields the
// README shows (operators grep for them), no more and no fewer.
func TestReloadLineAsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := regexp.MustCompile("`" + whyReload + ` ((?:[a-z_]+=\S*\s*)+)` + "`").FindSubmatch(readme)
	if documented == nil {
		t.Fatalf("the README shows no %q line", whyReload)
	}
	nc, _ := natstest.JetStream(t)
	var logs strings.Builder
	r, err := New(nc, Config{Apps: []App{{AppID: "wx1", Secret: NewSecret("s1")}}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetApps([]App{{AppID: "wx1", Secret: NewSecret("s1-new")}, {AppID: "wx2", Secret: NewSecret("s2")}}); err != nil {
		t.Fatal(err)
	}
	_, logged, found := strings.Cut(logs.String(), `msg="`+whyReload+`" `)
	if !found {
		t.Fatalf("no %q line in the log:\n%s", whyReload, logs.String())
	}
	logged, _, _ = strings.Cut(logged, "\n")
	fields := regexp.MustCompile(`(?:^|\s)([a-z_]+)=`)
	keys := func(s string) (out []string) {
		for _, m := range fields.FindAllStringSubmatch(s, -1) {
			out = append(out, m[1])
		}
		return out
	}
	if got, want := keys(logged), keys(string(documented[1])); !slices.Equal(got, want) {
		t.Errorf("the reload line logs %q, the README documents %q", got, want)
	}
	if !strings.Contains(logged, "added=wx2") || !strings.Contains(logged, "changed=wx1") {
		t.Errorf("the reload line %q does not name the app added and the one whose secret changed", logged)
	}
}

// TestReloadAddsBackAPlatformItRemoved: the platform bucket is opened at
// start when the apps have a platform, and followed until the refresher
// stops. A reload that removed every platform leaves it open, so a later
// reload may add a platform again: only a refresher started with none
// needs a restart for its first.
func TestReloadAddsBackAPlatformItRemoved(t *testing.T) {
	nc, _ := natstest.JetStream(t)
	plain := App{AppID: "wx1", Secret: NewSecret("s1")}
	platform := App{AppID: component, Secret: NewSecret("s"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{plain, platform}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetApps([]App{plain}); err != nil {
		t.Fatalf("a reload without the platform: %v", err)
	}
	if err := r.SetApps([]App{plain, platform}); err != nil {
		t.Errorf("a reload that adds the platform back: %v, want it taken", err)
	}
	if !r.creds.Has(component) {
		t.Error("the platform added back has no credential")
	}
}
