package publisher

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/kv"
)

// quotaMetrics are quota/get's last readings, per app and API path (see
// quota.go), set by the leader on every reading. They are kept as numbers
// and made into metrics when scraped: with 10,000 apps, six gauge vectors
// of a series per app and path held about 20 MB, a reading held so is a
// few dozen bytes.
type quotaMetrics struct {
	mu       sync.Mutex
	readings map[quotaKey]quotaNumbers
}

type quotaKey struct{ appid, path string }

// quotaNumbers is what the gauges show of one reading.
type quotaNumbers struct {
	limit, used, remaining, others int64
	rateCalls, rateSeconds         int64
	rated                          bool // quota/get gave a rate_limit
}

var (
	quotaLimitDesc = prometheus.NewDesc("wxtoken_api_quota_limit",
		"The app's daily limit of calls to the API path, as WeChat's quota/get last said.", []string{"appid", "path"}, nil)
	quotaUsedDesc = prometheus.NewDesc("wxtoken_api_quota_used",
		"The app's calls to the API path today (China time), by anyone, as WeChat's quota/get last counted them (within 1%).", []string{"appid", "path"}, nil)
	quotaRemainingDesc = prometheus.NewDesc("wxtoken_api_quota_remaining",
		"The app's calls to the API path left today, as WeChat's quota/get last said.", []string{"appid", "path"}, nil)
	callsByOthersDesc = prometheus.NewDesc("wxtoken_upstream_calls_by_others",
		"The app's calls to the API path today (China time) that wxtoken did not make: WeChat's count less the ledger's, beyond WeChat's 1% (see the README, \"Another party's fetches, counted\").",
		[]string{"appid", "path"}, nil)
	rateCallsDesc = prometheus.NewDesc("wxtoken_api_quota_rate_limit_calls",
		"Calls allowed per period on the API path, where quota/get gives a rate_limit.", []string{"appid", "path"}, nil)
	rateSecondsDesc = prometheus.NewDesc("wxtoken_api_quota_rate_limit_seconds",
		"The period of the API path's rate_limit, in seconds, where quota/get gives one.", []string{"appid", "path"}, nil)
)

func newQuotaMetrics() *quotaMetrics {
	return &quotaMetrics{readings: map[quotaKey]quotaNumbers{}}
}

func (q *quotaMetrics) collectors() []prometheus.Collector { return []prometheus.Collector{q} }

// QuotaReading sets the gauges of appid's path to reading.
func (m *metrics) QuotaReading(appid, path string, r kv.QuotaReading) {
	n := quotaNumbers{limit: r.DailyLimit, used: r.Used, remaining: r.Remain, others: r.Others}
	if r.RateLimit != nil {
		n.rateCalls, n.rateSeconds, n.rated = r.RateLimit.CallCount, r.RateLimit.RefreshSecond, true
	}
	q := m.quota
	q.mu.Lock()
	defer q.mu.Unlock()
	q.readings[quotaKey{appid, path}] = n
}

// forget drops the series of an app a reload removed.
func (q *quotaMetrics) forget(appid string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k := range q.readings {
		if k.appid == appid {
			delete(q.readings, k)
		}
	}
}

// reset drops every series: the replica no longer leads.
func (q *quotaMetrics) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	clear(q.readings)
}

func (q *quotaMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{quotaLimitDesc, quotaUsedDesc, quotaRemainingDesc, callsByOthersDesc, rateCallsDesc, rateSecondsDesc} {
		ch <- d
	}
}

func (q *quotaMetrics) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	defer q.mu.Unlock()
	gauge := func(d *prometheus.Desc, v int64, k quotaKey) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), k.appid, k.path)
	}
	for k, n := range q.readings {
		gauge(quotaLimitDesc, n.limit, k)
		gauge(quotaUsedDesc, n.used, k)
		gauge(quotaRemainingDesc, n.remaining, k)
		gauge(callsByOthersDesc, n.others, k)
		if n.rated {
			gauge(rateCallsDesc, n.rateCalls, k)
			gauge(rateSecondsDesc, n.rateSeconds, k)
		}
	}
}
