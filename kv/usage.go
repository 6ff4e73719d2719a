package kv

import (
	"encoding/json"
	"fmt"
	"time"
)

// Usage is where each `wxtoken agent` publishes what its proxy sent to
// WeChat (a plain publish; the refresher's leader reads it to know which
// API paths to ask quota/get about, and which rids to look up).
func (s Subjects) Usage() string { return s.prefix() + ".usage" }

// UsageReport is an agent's report on the Usage subject: its proxy's
// calls since it started, per app and API path (cumulative, so that a
// lost report loses nothing), and the last rejections that named a rid.
// It holds no token, secret or request body.
type UsageReport struct {
	Agent string      `json:"agent"` // the agent's instance name
	At    time.Time   `json:"at"`
	Paths []PathUsage `json:"paths"`
	// Rids are WeChat's answers that named a rid on an error the
	// refresher looks up (40001, 45009, 40164, 48001), the newest last.
	Rids []RidSeen `json:"rids,omitempty"`
}

// PathUsage is the calls an agent's proxy made to one API path for one
// app: all, and those WeChat answered with an errcode other than 0, by the
// errcode's class (as failure events name them: "token", "quota",
// "config", "retry", "other").
type PathUsage struct {
	AppID   string           `json:"appid"`
	Path    string           `json:"cgi_path"`
	Calls   int64            `json:"calls"`
	Errors  map[string]int64 `json:"errors,omitempty"`
	Seconds float64          `json:"seconds"` // the calls' summed latency
}

// RidSeen is one answer of WeChat's that named a rid.
type RidSeen struct {
	AppID   string    `json:"appid"`
	Path    string    `json:"cgi_path"`
	ErrCode int       `json:"errcode"`
	Rid     string    `json:"rid"`
	At      time.Time `json:"at"`
}

// MaxUsagePaths bounds a report's paths: an agent with more reports the
// most called.
const MaxUsagePaths = 2000

// DecodeUsageReport decodes and checks a report.
func DecodeUsageReport(data []byte) (UsageReport, error) {
	if len(data) > 1<<20 {
		return UsageReport{}, fmt.Errorf("%w: usage report of %d bytes", ErrInvalidRecord, len(data))
	}
	var r UsageReport
	if err := json.Unmarshal(data, &r); err != nil {
		return UsageReport{}, fmt.Errorf("%w: usage report: %w", ErrInvalidRecord, err)
	}
	if len(r.Paths) > MaxUsagePaths {
		return UsageReport{}, fmt.Errorf("%w: usage report of %d paths", ErrInvalidRecord, len(r.Paths))
	}
	for _, p := range r.Paths {
		if err := ValidateAppID(p.AppID); err != nil {
			return UsageReport{}, fmt.Errorf("%w: usage report: %w", ErrInvalidRecord, err)
		}
		if !cgiPath.MatchString(p.Path) || p.Calls < 0 {
			return UsageReport{}, fmt.Errorf("%w: usage report: path %.70q, %d calls", ErrInvalidRecord, p.Path, p.Calls)
		}
	}
	for _, s := range r.Rids {
		if err := ValidateAppID(s.AppID); err != nil || !cgiPath.MatchString(s.Path) || s.Rid == "" || len(s.Rid) > 128 {
			return UsageReport{}, fmt.Errorf("%w: usage report: rid %.70q of %.70q", ErrInvalidRecord, s.Rid, s.Path)
		}
	}
	return r, nil
}

// ValidPath reports whether path is an API path a usage report may name:
// what an agent checks before it counts a forwarded call's path.
func ValidPath(path string) bool { return cgiPath.MatchString(path) }
