package source

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

func TestHourlyLimitsKeepWeComsTicketLimits(t *testing.T) {
	var l HourlyLimits
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
	var corp HourlyLimits
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
	limited := &upstream.Error{ErrCode: 45009, Class: upstream.ClassFrequency}
	if got, ok := frequencyPause(limited, 1, now); !ok || got != 20*time.Second {
		t.Errorf("first 45009: pause %s, want 20s to the next minute", got)
	}
	if got, ok := frequencyPause(limited, 2, now); !ok || got != 42*time.Minute+20*time.Second {
		t.Errorf("second 45009: pause %s, want to the next hour", got)
	}
	if _, ok := frequencyPause(&upstream.Error{ErrCode: -1, Class: upstream.ClassRetry}, 1, now); ok {
		t.Error("a busy WeCom paused as its frequency limit")
	}
}
