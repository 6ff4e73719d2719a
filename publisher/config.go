package publisher

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/wxtoken/wxtoken/internal/failover"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/source"
)

// Defaults of Config; the README lists them with their flags.
const (
	// DefaultUpstreamURL is WeChat's API, its nearest entry and then the
	// fallback WeChat documents for when it fails (异地容灾).
	DefaultUpstreamURL      = "https://api.weixin.qq.com,https://api2.weixin.qq.com"
	DefaultWeComURL         = "https://qyapi.weixin.qq.com" // WeCom's (企业微信) API
	DefaultSchedule         = "@every 30s"
	DefaultRefreshBefore    = 10 * time.Minute
	DefaultMinForceInterval = 30 * time.Second
	DefaultLeaseTTL         = 10 * time.Second
	DefaultUpstreamTimeout  = 5 * time.Second
	DefaultUpstreamRate     = 50.0
	DefaultUpstreamRecheck  = failover.DefaultRecheck
	DefaultProbeEvery       = time.Hour // serve's --probe-every; Config's zero probes nothing
	DefaultQuotaEvery       = time.Hour // serve's --quota-every; Config's zero asks nothing
	// DefaultQuotaClearReserve is serve's --quota-clear-reserve: the
	// account's quota resets a month (of 10) left to the console.
	DefaultQuotaClearReserve = 3

	// MinUpstreamRate is the slowest pacing accepted: one fetch in 100 s.
	MinUpstreamRate = 0.01

	DefaultRetryBackoff       = time.Second
	DefaultRetryBackoffMax    = time.Minute
	DefaultConfigErrorBackoff = 10 * time.Minute
)

// withDefaults returns c with zero fields set and checks it.
func (c Config) withDefaults() (Config, cron.Schedule, error) {
	if c.Bucket == "" {
		c.Bucket = kv.DefaultBucket
	}
	if c.PlatformBucket == "" {
		c.PlatformBucket = kv.DefaultPlatformBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.History == 0 {
		c.History = 1
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = kv.DefaultSubjectPrefix
	}
	if c.Schedule == "" {
		c.Schedule = DefaultSchedule
	}
	setDefault(&c.RefreshBefore, DefaultRefreshBefore)
	setDefault(&c.MinForceInterval, DefaultMinForceInterval)
	setDefault(&c.LeaseTTL, DefaultLeaseTTL)
	setDefault(&c.UpstreamTimeout, DefaultUpstreamTimeout)
	setDefault(&c.UpstreamRecheck, DefaultUpstreamRecheck)
	setDefault(&c.RetryBackoff, DefaultRetryBackoff)
	setDefault(&c.RetryBackoffMax, DefaultRetryBackoffMax)
	setDefault(&c.ConfigErrorBackoff, DefaultConfigErrorBackoff)
	if c.UpstreamURL == "" {
		c.UpstreamURL = DefaultUpstreamURL
	}
	if c.WeComURL == "" {
		c.WeComURL = DefaultWeComURL
	}
	if c.UpstreamRate == 0 {
		c.UpstreamRate = DefaultUpstreamRate
	}
	if c.Instance == "" {
		host, _ := os.Hostname()
		c.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	var errs []error
	if err := checkApps(c.Apps); err != nil {
		errs = append(errs, err)
	}
	if err := kv.ValidateBucketName(c.PlatformBucket); err != nil {
		errs = append(errs, err)
	}
	if err := kv.ValidateSubjectPrefix(c.SubjectPrefix); err != nil {
		errs = append(errs, err)
	}
	if _, err := failover.Parse(c.UpstreamURL); err != nil {
		errs = append(errs, fmt.Errorf("wechat-base-url: %w", err))
	}
	if _, err := failover.Parse(c.WeComURL); err != nil {
		errs = append(errs, fmt.Errorf("wecom-base-url: %w", err))
	} else if strings.Contains(c.WeComURL, ",") {
		errs = append(errs, fmt.Errorf("wecom-base-url %q: WeCom has one API domain; give one URL", c.WeComURL))
	}
	if err := checkDomain(c.JSDomain); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"refresh-before", c.RefreshBefore}, {"min-force-interval", c.MinForceInterval},
		{"lease-ttl", c.LeaseTTL}, {"upstream-timeout", c.UpstreamTimeout}, {"wechat-base-recheck", c.UpstreamRecheck},
		{"retry backoff", c.RetryBackoff}, {"retry backoff max", c.RetryBackoffMax}, {"config error backoff", c.ConfigErrorBackoff},
	} {
		if d.value < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, d.value))
		}
	}
	if c.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease-ttl %s is shorter than 1s", c.LeaseTTL))
	}
	// A fetch must end well inside the lease, or a leader could still be
	// waiting on WeChat when its lease passes to another replica.
	if c.UpstreamTimeout > c.LeaseTTL/2 {
		errs = append(errs, fmt.Errorf("upstream-timeout %s must be at most half the lease-ttl %s", c.UpstreamTimeout, c.LeaseTTL))
	}
	if err := c.checkSourceAddr(); err != nil {
		errs = append(errs, err)
	}
	if c.QuotaClearReserve < 0 || c.QuotaClearReserve > source.AccountResets {
		errs = append(errs, fmt.Errorf("quota-clear-reserve %d is not in 0..%d (the account's resets a month)", c.QuotaClearReserve, source.AccountResets))
	}
	if c.ProbeEvery < 0 {
		errs = append(errs, fmt.Errorf("probe-every %s is negative (0 turns the probes off)", c.ProbeEvery))
	}
	if c.QuotaEvery < 0 {
		errs = append(errs, fmt.Errorf("quota-every %s is negative (0 turns the quota poller off)", c.QuotaEvery))
	}
	if c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("retry backoff max %s is below the retry backoff %s", c.RetryBackoffMax, c.RetryBackoff))
	}
	// The pacer's interval, 1/rate, must fit a time.Duration, and a fetch
	// should not wait minutes for its turn; NaN and infinities make no
	// schedule at all.
	if !(c.UpstreamRate >= MinUpstreamRate) || math.IsInf(c.UpstreamRate, 1) {
		errs = append(errs, fmt.Errorf("upstream rate %g is not a number of calls per second of at least %g", c.UpstreamRate, MinUpstreamRate))
	}
	schedule, err := parseSchedule(c.Schedule)
	if err != nil {
		errs = append(errs, err)
	}
	if c.History < 1 || c.History > 64 {
		errs = append(errs, fmt.Errorf("history %d is not between 1 and 64", c.History))
	}
	if c.Replicas < 1 {
		errs = append(errs, fmt.Errorf("replicas %d is not positive", c.Replicas))
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, err := range errs {
			msgs[i] = err.Error()
		}
		return Config{}, nil, fmt.Errorf("publisher: config: %s", strings.Join(msgs, "; "))
	}
	return c, schedule, nil
}

// Validate reports what is wrong with c, all of it in one line, or nil.
// New checks the same; Validate lets a command check before it starts
// anything.
func (c Config) Validate() error {
	_, _, err := c.withDefaults()
	return err
}

// checkApps reports what is wrong with a list of apps, all of it in one
// error, or nil.
func checkApps(apps []App) error {
	var errs []string
	if len(apps) == 0 {
		errs = append(errs, "no apps: give an apps file or WECHAT_APPID")
	}

	for _, a := range apps {
		if err := a.checkIdentity(); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if a.Secret.IsZero() {
			errs = append(errs, fmt.Sprintf("app %s has no secret", a.Key()))
		}
		if err := a.TokenAPI.check(); err != nil {
			errs = append(errs, fmt.Sprintf("app %s: %s", a.Key(), err))
		}
		if err := checkTickets(a.Tickets, a.wecom()); err != nil {
			errs = append(errs, fmt.Sprintf("app %s: %s", a.Key(), err))
		}
	}
	if err := checkUnique(apps); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// parseSchedule parses the cron spec of the refresh check. Its error says
// what to write, then what cron found wrong.
func parseSchedule(spec string) (cron.Schedule, error) {
	schedule, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: write @every 30s or five cron fields "+
			"(minute hour day-of-month month day-of-week, such as */5 * * * *); %w", spec, err)
	}
	return schedule, nil
}
