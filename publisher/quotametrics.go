package publisher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/kv"
)

// quotaMetrics are quota/get's last readings, per app and API path (see
// quota.go), set by the leader on every reading.
type quotaMetrics struct {
	limit, used, remaining, others *prometheus.GaugeVec
	rateCalls, rateSeconds         *prometheus.GaugeVec
}

func newQuotaMetrics() *quotaMetrics {
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"appid", "path"})
	}
	return &quotaMetrics{
		limit:     gauge("wxtoken_api_quota_limit", "The app's daily limit of calls to the API path, as WeChat's quota/get last said."),
		used:      gauge("wxtoken_api_quota_used", "The app's calls to the API path today (China time), by anyone, as WeChat's quota/get last counted them (within 1%)."),
		remaining: gauge("wxtoken_api_quota_remaining", "The app's calls to the API path left today, as WeChat's quota/get last said."),
		others: gauge("wxtoken_upstream_calls_by_others",
			"The app's calls to the API path today (China time) that wxtoken did not make: WeChat's count less the ledger's, beyond WeChat's 1% (see the README, \"Another party's fetches, counted\")."),
		rateCalls:   gauge("wxtoken_api_quota_rate_limit_calls", "Calls allowed per period on the API path, where quota/get gives a rate_limit."),
		rateSeconds: gauge("wxtoken_api_quota_rate_limit_seconds", "The period of the API path's rate_limit, in seconds, where quota/get gives one."),
	}
}

func (q *quotaMetrics) collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	for _, g := range q.gauges() {
		cs = append(cs, g)
	}
	return cs
}

// QuotaReading sets the gauges of appid's path to reading.
func (m *metrics) QuotaReading(appid, path string, r kv.QuotaReading) {
	q := m.quota
	q.limit.WithLabelValues(appid, path).Set(float64(r.DailyLimit))
	q.used.WithLabelValues(appid, path).Set(float64(r.Used))
	q.remaining.WithLabelValues(appid, path).Set(float64(r.Remain))
	q.others.WithLabelValues(appid, path).Set(float64(r.Others))
	if r.RateLimit != nil {
		q.rateCalls.WithLabelValues(appid, path).Set(float64(r.RateLimit.CallCount))
		q.rateSeconds.WithLabelValues(appid, path).Set(float64(r.RateLimit.RefreshSecond))
	}
}

// forget drops the series of an app a reload removed.
func (q *quotaMetrics) forget(appid string) {
	for _, c := range q.gauges() {
		c.DeletePartialMatch(prometheus.Labels{"appid": appid})
	}
}

// reset drops every series: the replica no longer leads.
func (q *quotaMetrics) reset() {
	for _, c := range q.gauges() {
		c.Reset()
	}
}

func (q *quotaMetrics) gauges() []*prometheus.GaugeVec {
	return []*prometheus.GaugeVec{q.limit, q.used, q.remaining, q.others, q.rateCalls, q.rateSeconds}
}
