package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// maxCountedPaths bounds the API paths (per app) the agent counts, in its
// metrics and its report: the paths are the services' to choose, and a
// service that calls made-up paths must not grow the agent without end.
// A call to a path past it, or to one that is no API path, is counted
// under the path "other" in the metrics and left out of the report.
const maxCountedPaths = 500

// maxReportedRids bounds the rids one report carries: the newest.
const maxReportedRids = 100

// otherPath is the metrics' path of the calls not counted by their own.
const otherPath = "other"

// usage is what the proxy sent to WeChat since the agent started: calls
// per app and API path, and the rids worth a lookup seen since the last
// report.
type usage struct {
	mu      sync.Mutex
	paths   map[usageKey]*kv.PathUsage
	rids    []kv.RidSeen
	changed bool // since the last report
	warned  bool // that maxCountedPaths was reached
}

type usageKey struct{ appid, path string }

func newUsage() *usage { return &usage{paths: map[usageKey]*kv.PathUsage{}} }

// proxiedCall is one call the proxy made, as counted.
type proxiedCall struct {
	appid   string // "" for a call counted in the metrics only: WeCom's (quota/get is WeChat's)
	path    string
	answer  wechaterr.Answer
	status  int  // the answer's HTTP status
	failed  bool // no answer
	latency time.Duration
}

// class is the call's class in the metrics and the report.
func (c proxiedCall) class() string {
	switch {
	case c.failed:
		return "no_answer"
	case c.status >= 400: // WeChat answers its errors with 200
		return "http_error"
	}
	return wechaterr.Class(c.answer.ErrCode)
}

// record counts call, and returns the path the metrics name it by: its
// own, or otherPath. It reports whether the agent just reached
// maxCountedPaths, which is worth a warning once.
func (u *usage) record(call proxiedCall, now time.Time) (path string, full bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	key := usageKey{call.appid, call.path}
	p, ok := u.paths[key]
	if !ok {
		if !kv.ValidPath(call.path) {
			return otherPath, false
		}
		if len(u.paths) >= maxCountedPaths {
			full, u.warned = !u.warned, true
			return otherPath, full
		}
		p = &kv.PathUsage{AppID: call.appid, Path: call.path}
		u.paths[key] = p
	}
	p.Calls++
	p.Seconds += call.latency.Seconds()
	if class := call.class(); class != wechaterr.ClassOK {
		if p.Errors == nil {
			p.Errors = map[string]int64{}
		}
		p.Errors[class]++
	}
	if p.AppID != "" {
		u.changed = true // a call only the metrics count is no reason to report
	}
	if p.AppID != "" && !call.failed && wechaterr.RidWorthLooking(call.answer.ErrCode) {
		if rid, ok := wechaterr.Rid(call.answer.ErrMsg); ok {
			u.rids = append(u.rids, kv.RidSeen{AppID: call.appid, Path: call.path, ErrCode: call.answer.ErrCode, Rid: rid, At: now.UTC()})
			if len(u.rids) > maxReportedRids {
				u.rids = slices.Delete(u.rids, 0, len(u.rids)-maxReportedRids)
			}
		}
	}
	return call.path, false
}

// report returns the report of the calls so far, and forgets the rids it
// carries, or false when nothing changed since the last.
func (u *usage) report(agent string, now time.Time) (kv.UsageReport, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.changed {
		return kv.UsageReport{}, false
	}
	r := kv.UsageReport{Agent: agent, At: now.UTC(), Rids: u.rids}
	for _, p := range u.paths {
		if p.AppID == "" { // WeCom's: counted in the metrics only
			continue
		}
		c := *p
		c.Errors = maps.Clone(p.Errors)
		r.Paths = append(r.Paths, c)
	}
	slices.SortFunc(r.Paths, func(a, b kv.PathUsage) int { return cmp.Or(cmp.Compare(a.AppID, b.AppID), cmp.Compare(a.Path, b.Path)) })
	u.rids, u.changed = nil, false
	return r, true
}

// counted counts a call the proxy made, in the metrics and the report.
func (a *Agent) counted(key, path string, resp *http.Response, answer wechaterr.Answer, err error, latency time.Duration) {
	appid, _ := kv.SplitKey(key)
	_, _, wecom := kv.SplitWeComKey(key)
	call := proxiedCall{appid: appid, path: path, answer: answer, failed: err != nil, latency: latency}
	if err == nil {
		call.status = resp.StatusCode
	}
	if wecom || kv.ValidateAppID(appid) != nil {
		// In the metrics only: WeChat's quota/get and rid/get are not
		// WeCom's, and a report naming no appid would be refused.
		call.appid = ""
	}
	label, full := a.usage.record(call, time.Now())
	if full {
		a.log.Warn("the agent counts no more API paths: calls to new ones are counted under path \"other\" and not reported",
			"paths", maxCountedPaths)
	}
	a.metrics.apiCall(appid, label, call.class(), latency)
}

// reportUsage publishes the usage report every UsageEvery when anything
// changed, until ctx ends.
func (a *Agent) reportUsage(ctx context.Context) {
	tick := time.NewTicker(a.cfg.UsageEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.publishUsage() // the rids since the last, before the agent stops
			return
		case <-tick.C:
			a.publishUsage()
		}
	}
}

// publishUsage publishes the usage report, if anything changed.
func (a *Agent) publishUsage() {
	r, ok := a.usage.report(a.name, time.Now())
	if !ok {
		return
	}
	data, err := json.Marshal(r)
	if err == nil {
		err = a.cfg.Conn.Publish(kv.Subjects{Prefix: a.cfg.SubjectPrefix}.Usage(), data)
	}
	if err != nil {
		a.log.Warn("usage report not published; the next carries the counts again, not these rids",
			"rids", len(r.Rids), "error", err)
	}
}

// instanceName names this agent in its reports: host and process.
func instanceName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "agent"
	}
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}
