package publisher

import "github.com/prometheus/client_golang/prometheus"

// rescueMetrics are the metrics of the rescues of spent quotas.
type rescueMetrics struct {
	rescues *prometheus.CounterVec // appid, api, outcome
	budget  *prometheus.GaugeVec   // appid, api
}

func newRescueMetrics() rescueMetrics {
	return rescueMetrics{
		rescues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_quota_rescues_total",
			Help: "Rescues of an app's spent daily quota (45009 with the value held expiring before 00:00 China time), by the reset called (quota_clear, clear_quota, clear_quota_v2; a platform's component_clear_quota, component_clear_quota_v2; none); a platform's authorizers' under the platform's appid and outcome (rescued, off, reserve, spent_elsewhere, not_clearable, unverified, again, failed). See the README, \"A spent quota, rescued\".",
		}, []string{"appid", "api", "outcome"}),
		budget: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wxtoken_quota_clear_budget_remaining",
			Help: "Resets of the app's quota wxtoken may still spend this China month, by budget: quota_clear (one path, 50 a month), clear_quota (the account, 10 a month shared with clear_quota/v2, a platform's component forms of both and the console, less --quota-clear-reserve). Set at each rescue.",
		}, []string{"appid", "api"}),
	}
}

func (r rescueMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.rescues, r.budget}
}

// QuotaRescue counts a rescue of appid's spent quota.
func (m *metrics) QuotaRescue(appid, api, outcome string) {
	m.rescue.rescues.WithLabelValues(appid, api, outcome).Inc()
}

// QuotaClearBudget shows the resets of budget wxtoken may still spend.
func (m *metrics) QuotaClearBudget(appid, budget string, remaining int) {
	m.rescue.budget.WithLabelValues(appid, budget).Set(float64(remaining))
}
