package publisher

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestHourlyLimitsKeepWeComsTicketLimits(t *testing.T) {
	var l hourlyLimits
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	app := "ww1-1000002.agent_config_ticket"
	for i := range 100 {
		if err := l.take(app, now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	err := l.take(app, now.Add(200*time.Second))
	var paused *pausedError
	if !errors.As(err, &paused) || !paused.until.Equal(now.Add(time.Hour)) {
		t.Fatalf("the 101st call of an hour: %v, want a pause until %s", err, now.Add(time.Hour))
	}
	if err := l.take(app, now.Add(time.Hour+time.Second)); err != nil {
		t.Fatalf("after the first call left the hour: %v", err)
	}
	// 400 jsapi tickets per corp, across its apps.
	var corp hourlyLimits
	for i := range 400 {
		key := fmt.Sprintf("ww1-app%d.jsapi_ticket", i%5)
		if err := corp.take(key, now); err != nil {
			t.Fatalf("corp call %d: %v", i+1, err)
		}
	}
	if err := corp.take("ww1-app9.jsapi_ticket", now); err == nil || !strings.Contains(err.Error(), "corp ww1") {
		t.Fatalf("the corp's 401st jsapi ticket call: %v", err)
	}
	if err := corp.take("ww2-app0.jsapi_ticket", now); err != nil {
		t.Fatalf("another corp: %v", err)
	}
}

func TestFrequencyLimitPausesToTheMinuteThenTheHour(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 17, 40, 0, time.UTC)
	if got := untilFrequencyReset(now, 1); got != 20*time.Second {
		t.Errorf("first 45009: pause %s, want 20s to the next minute", got)
	}
	if got := untilFrequencyReset(now, 2); got != 42*time.Minute+20*time.Second {
		t.Errorf("second 45009: pause %s, want to the next hour", got)
	}
}

func TestWeComAppsInTheAppsFile(t *testing.T) {
	apps, err := ParseApps([]byte(`
apps:
  - corpid: ww1234567890abcdef
    agent: "1000002"
    secret: s
    tickets: [jsapi, agent_config]
  - corpid: ww1234567890abcdef
    agent: contacts
    secret: t
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if apps[0].Key() != "ww1234567890abcdef-1000002" || apps[1].Key() != "ww1234567890abcdef-contacts" {
		t.Errorf("keys %s %s", apps[0].Key(), apps[1].Key())
	}
	for name, tc := range map[string]struct{ yaml, inErr string }{
		"no agent":      {"apps:\n  - corpid: ww1\n    secret: s", "needs agent"},
		"both ids":      {"apps:\n  - corpid: ww1\n    appid: wx000000000000000a\n    agent: a\n    secret: s", "not both"},
		"agent of app":  {"apps:\n  - appid: wx000000000000000a\n    agent: a\n    secret: s", "agent belongs to a WeCom app"},
		"stable wecom":  {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n    token_api: stable", "WeCom has gettoken alone"},
		"card on wecom": {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n    tickets: [wx_card]", `WeCom app ww1-a: tickets: "wx_card" is not`},
		"agent_config":  {"apps:\n  - appid: wx000000000000000a\n    secret: s\n    tickets: [agent_config]", `app wx000000000000000a: tickets: "agent_config" is not`},
		"dash":          {"apps:\n  - corpid: ww-1\n    agent: a\n    secret: s", "not a corp id"},
		"appid dash":    {"apps:\n  - appid: ww1-2\n    secret: s", `has a "-"`},
		"same twice":    {"apps:\n  - corpid: ww1\n    agent: a\n    secret: s\n  - corpid: ww1\n    agent: a\n    secret: t", "twice"},
	} {
		if _, err := ParseApps([]byte(tc.yaml), env(nil)); err == nil || !strings.Contains(err.Error(), tc.inErr) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.inErr)
		}
	}
}
