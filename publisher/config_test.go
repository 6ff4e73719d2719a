package publisher

import (
	"math"
	"strings"
	"testing"
	"time"
)

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
		"negative reserve": {Config{Apps: app, QuotaClearReserve: -1}, "quota-clear-reserve -1 is not in 0..10"},
		"reserve over 10":  {Config{Apps: app, QuotaClearReserve: 11}, "quota-clear-reserve 11 is not in 0..10"},
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
