package publisher

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestWindowIsCutForShortLifetimes(t *testing.T) {
	r := &Refresher{cfg: Config{RefreshBefore: 10 * time.Minute}}
	for lifetime, want := range map[time.Duration]time.Duration{
		7200 * time.Second: 10 * time.Minute,
		20 * time.Minute:   10 * time.Minute,
		90 * time.Second:   45 * time.Second,
		30 * time.Second:   15 * time.Second,
	} {
		if got := r.window(classicSource{}, lifetime); got != want {
			t.Errorf("window(%s) = %s, want %s", lifetime, got, want)
		}
	}
}

// A stable token is replaced in its last 5 minutes, where WeChat issues a
// new one, spread included: earlier calls return the same token.
func TestStableWindowStaysInsideTheRenewal(t *testing.T) {
	r := &Refresher{cfg: Config{RefreshBefore: 10 * time.Minute}}
	for lifetime, want := range map[time.Duration]time.Duration{
		7200 * time.Second: 225 * time.Second,
		345 * time.Second:  172500 * time.Millisecond, // a token fetched with 345 s left
		300 * time.Second:  150 * time.Second,
	} {
		got := r.window(stableSource{}, lifetime)
		if got != want {
			t.Errorf("stable window(%s) = %s, want %s", lifetime, got, want)
		}
		if lead := got + got/5; lead >= stableRenewal {
			t.Errorf("stable window(%s) with its spread starts %s before expiry, outside WeChat's %s", lifetime, lead, stableRenewal)
		}
	}
	short := &Refresher{cfg: Config{RefreshBefore: 4 * time.Second}}
	if got := short.window(stableSource{}, time.Hour); got != 4*time.Second {
		t.Errorf("a shorter RefreshBefore is kept: got %s", got)
	}
}

func TestSpreadOfIsStableAndBounded(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := range 100 {
		appid := "wx" + strings.Repeat("0", 14) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		d := spreadOf(appid, 1, 2*time.Minute)
		if d < 0 || d >= 2*time.Minute || d != spreadOf(appid, 1, 2*time.Minute) {
			t.Fatalf("spreadOf(%s) = %s", appid, d)
		}
		seen[d.Truncate(time.Second)] = true
	}
	if len(seen) < 50 {
		t.Errorf("100 apps spread over only %d distinct seconds", len(seen))
	}
	if spreadOf("wx1", 1, 0) != 0 {
		t.Error("spread with no span")
	}
}

func TestRetryDelayGrowsToItsCap(t *testing.T) {
	for _, tc := range []struct {
		failures  int
		least, at time.Duration // the pause is within [least, at]
	}{
		{1, 500 * time.Millisecond, time.Second},
		{2, time.Second, 2 * time.Second},
		{3, 2 * time.Second, 4 * time.Second},
		{6, 16 * time.Second, 32 * time.Second},
		{7, 30 * time.Second, time.Minute}, // 64s, capped
		{40, 30 * time.Second, time.Minute},
	} {
		for range 100 {
			if d := retryDelay(tc.failures, time.Second, time.Minute); d < tc.least || d > tc.at {
				t.Fatalf("retryDelay(%d) = %s, want within [%s, %s]", tc.failures, d, tc.least, tc.at)
			}
		}
	}
}

func TestConfigErrors(t *testing.T) {
	app := []App{{AppID: "wx1", Secret: NewSecret("s")}}
	for name, tc := range map[string]struct {
		cfg   Config
		inErr string
	}{
		"no apps":          {Config{}, "no apps"},
		"no secret":        {Config{Apps: []App{{AppID: "wx1"}}}, "no secret"},
		"bad schedule":     {Config{Apps: app, Schedule: "every minute"}, `schedule "every minute": write @every 30s or five cron fields`},
		"every, no unit":   {Config{Apps: app, Schedule: "@every 30"}, `schedule "@every 30": write @every 30s or five cron fields`},
		"six fields":       {Config{Apps: app, Schedule: "0 */5 * * * *"}, `write @every 30s or five cron fields (minute hour day-of-month month day-of-week, such as */5 * * * *)`},
		"short lease":      {Config{Apps: app, LeaseTTL: 500 * time.Millisecond}, "lease-ttl"},
		"slow upstream":    {Config{Apps: app, UpstreamTimeout: 8 * time.Second}, "upstream-timeout"},
		"bad prefix":       {Config{Apps: app, SubjectPrefix: "a.*"}, "prefix"},
		"negative refresh": {Config{Apps: app, RefreshBefore: -time.Second}, "refresh-before"},
		"negative rate":    {Config{Apps: app, UpstreamRate: -1}, "upstream rate -1"},
		"tiny rate":        {Config{Apps: app, UpstreamRate: 1e-12}, "upstream rate 1e-12"},
		"NaN rate":         {Config{Apps: app, UpstreamRate: math.NaN()}, "upstream rate NaN"},
		"infinite rate":    {Config{Apps: app, UpstreamRate: math.Inf(1)}, "upstream rate +Inf"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := tc.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.inErr)
			}
		})
	}
	cfg, _, err := Config{Apps: app}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Schedule != DefaultSchedule || cfg.RefreshBefore != DefaultRefreshBefore || cfg.LeaseTTL != DefaultLeaseTTL {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}
