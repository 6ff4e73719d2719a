package failover

import "github.com/prometheus/client_golang/prometheus"

// Collector reports the bases' health at scrape time, as
// <prefix>_base_up{base}, <prefix>_base_current{base} and
// <prefix>_base_failures_total{base}.
func (b *Bases) Collector(prefix string) prometheus.Collector {
	return collector{b: b,
		up: prometheus.NewDesc(prefix+"_base_up",
			"1 while the API base answers, 0 once it failed twice in a row (no answer, HTTP 5xx, errcode -1) and until it answers again.",
			[]string{"base"}, nil),
		current: prometheus.NewDesc(prefix+"_base_current",
			"1 for the API base calls go to now, 0 for the others.",
			[]string{"base"}, nil),
		failures: prometheus.NewDesc(prefix+"_base_failures_total",
			"Calls to the API base that got no answer, HTTP 5xx or errcode -1.",
			[]string{"base"}, nil),
	}
}

type collector struct {
	b                     *Bases
	up, current, failures *prometheus.Desc
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.current
	ch <- c.failures
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, h := range c.b.Health() {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, one(h.Up), h.URL)
		ch <- prometheus.MustNewConstMetric(c.current, prometheus.GaugeValue, one(h.Current), h.URL)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(h.Failures), h.URL)
	}
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
