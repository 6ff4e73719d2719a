package publisher

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
)

// metrics are the refresher's Prometheus metrics. They are registered with
// Config.Registerer when one is given; otherwise they count unseen.
type metrics struct {
	upstream  *appCounters             // appid, api, result (appcounters.go)
	latency   *prometheus.HistogramVec // api
	rotated   *appCounters             // appid, kind, reason
	requests  *prometheus.CounterVec   // outcome
	leader    prometheus.Gauge
	repaired  prometheus.Counter
	elsewhere *appCounters  // appid
	quota     *quotaMetrics // appid, path (quotametrics.go)
	rescue    rescueMetrics

	leading atomic.Bool // what leader shows: Refresher.Leading
}

func newMetrics(reg prometheus.Registerer, r *Refresher) *metrics {
	m := &metrics{
		upstream: newAppCounters("wxtoken_upstream_requests_total",
			"Calls to WeChat by app, API (token, stable_token, stable_token_force, jsapi_ticket, wx_card_ticket, component_token, authorizer_token: fetches; check: getcallbackip; start_push_ticket; quota_get: the leader's questions to quota/get) and result (ok, retry, config, quota, token, ticket; valid, invalid, error).",
			"api", "result"),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxtoken_upstream_request_duration_seconds",
			Help:    "Duration of calls to WeChat, failed ones included, by API.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"api"}),
		rotated: newAppCounters("wxtoken_rotations_total",
			"Values written by this replica, by app, kind (access_token, jsapi_ticket, wx_card_ticket) and reason (initial, scheduled, requested).",
			"kind", "reason"),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_refresh_requests_total",
			Help: "Refresh requests by outcome (refreshed, deduped, still_valid, rate_limited, current, error).",
		}, []string{"outcome"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxtoken_leader",
			Help: "1 while this replica leads (may call WeChat), 0 while it stands by.",
		}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxtoken_bucket_repairs_total",
			Help: "Times this replica repaired the token bucket: created it again after a deletion, moved revisions that started over, wrote back missing tokens.",
		}),
		elsewhere: newAppCounters("wxtoken_tokens_invalidated_elsewhere_total",
			"Tokens of the app WeChat said were dead before their expiry with no call of wxtoken's since their fetch that could end them: another party holds the AppSecret (see the README, \"Tokens killed by someone else\")."),
		quota:  newQuotaMetrics(),
		rescue: newRescueMetrics(),
	}
	if reg != nil {
		reg.MustRegister(m.upstream, m.latency, m.rotated, m.requests, m.leader, m.repaired, m.elsewhere, tokenCollector{r})
		reg.MustRegister(m.quota.collectors()...)
		reg.MustRegister(m.rescue.collectors()...)
	}
	return m
}

// UpstreamCall counts a call to WeChat for the credential of key.
func (m *metrics) UpstreamCall(key, api, result string, took time.Duration) {
	appid, _ := kv.SplitKey(key)
	m.upstream.inc(appid, api, result)
	m.latency.WithLabelValues(api).Observe(took.Seconds())
}

// Rotation counts a value written for the credential of key.
func (m *metrics) Rotation(key, reason string) {
	appid, kind := labelsOf(key)
	m.rotated.inc(appid, kind, reason)
}

// labelsOf returns the appid and kind labels of a key.
func labelsOf(key string) (appid, kind string) {
	appid, kind = kv.SplitKey(key)
	if kind == kv.KindToken {
		kind = "access_token"
	}
	return appid, kind
}

func (m *metrics) Request(outcome string) { m.requests.WithLabelValues(outcome).Inc() }

func (m *metrics) Repaired() { m.repaired.Inc() }

// InvalidatedElsewhere counts a token of key another party ended.
func (m *metrics) InvalidatedElsewhere(key string) {
	appid, _ := kv.SplitKey(key)
	m.elsewhere.inc(appid)
}

// appCalls are the calls to WeChat made for an app as a whole, not for
// one of its credentials: their series go with the app's token. (The
// names are those the calls are counted under, in source, quota.go and
// rid.go.)
var appCalls = []string{
	"check", "stable_token_force", "quota_get", "rid_get",
	kv.ResetPath, "clear_quota", "clear_quota_v2", "component_clear_quota", "component_clear_quota_v2",
}

// Forget drops the series of a credential a reload removed.
func (m *metrics) Forget(key, kind, api string) {
	appid, label := labelsOf(key)
	m.upstream.forget(appid, api)
	if kind == kv.KindToken {
		m.upstream.forget(appid, appCalls...)
		m.elsewhere.forget(appid)
		m.quota.forget(appid)
		m.rescue.rescues.DeletePartialMatch(prometheus.Labels{"appid": appid})
		m.rescue.budget.DeletePartialMatch(prometheus.Labels{"appid": appid})
	}
	m.rotated.forget(appid, label)
}

// setLeading records whether this replica leads.
func (m *metrics) setLeading(leading bool) {
	m.leading.Store(leading)
	if leading {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// tokenCollector reports, at scrape time, what the bucket holds for each
// app: every replica follows the bucket, so standbys report it too.
type tokenCollector struct{ r *Refresher }

var (
	expiresInDesc = prometheus.NewDesc("wxtoken_token_expires_in_seconds",
		"Seconds until the app's token or ticket (kind) in the bucket expires (negative once expired); absent while there is no valid record.",
		[]string{"appid", "kind"}, nil)
	fetchedDesc = prometheus.NewDesc("wxtoken_token_fetched_timestamp_seconds",
		"When the app's token or ticket (kind) in the bucket was fetched from WeChat (Unix time; for a ticket, when its value first appeared).",
		[]string{"appid", "kind"}, nil)
)

var (
	ticketAgeDesc = prometheus.NewDesc("wxtoken_platform_verify_ticket_age_seconds",
		"Seconds since WeChat pushed the newest component_verify_ticket of the platform (it works 12 hours); absent while none was pushed.",
		[]string{"component_appid"}, nil)
	authorizersDesc = prometheus.NewDesc("wxtoken_platform_authorizers",
		"Accounts that authorized the platform and whose tokens are kept.",
		[]string{"component_appid"}, nil)
)

func (c tokenCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiresInDesc
	ch <- fetchedDesc
	ch <- ticketAgeDesc
	ch <- authorizersDesc
}

func (c tokenCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.r.cfg.Clock.now()
	authorizers := map[string]int{} // by platform: the credentials fetched with its token
	c.r.creds.Each(func(v loop.Value) {
		authorizers[v.Parent]++
		if v.Record == nil {
			return
		}
		appid, kind := labelsOf(v.Key)
		ch <- prometheus.MustNewConstMetric(expiresInDesc, prometheus.GaugeValue, v.Record.ExpiresAt.Sub(now).Seconds(), appid, kind)
		ch <- prometheus.MustNewConstMetric(fetchedDesc, prometheus.GaugeValue, float64(v.Record.FetchedAt.Unix()), appid, kind)
	})
	c.collectPlatforms(ch, now, authorizers)
}

// collectPlatforms reports each configured platform's ticket and
// authorizers.
func (c tokenCollector) collectPlatforms(ch chan<- prometheus.Metric, now time.Time, authorizers map[string]int) {
	for _, component := range c.r.platforms.Served() {
		if !c.r.creds.Has(component) {
			continue
		}
		if t, ok := c.r.platforms.Ticket(component); ok {
			ch <- prometheus.MustNewConstMetric(ticketAgeDesc, prometheus.GaugeValue, now.Sub(t.CreateTime).Seconds(), component)
		}
		ch <- prometheus.MustNewConstMetric(authorizersDesc, prometheus.GaugeValue, float64(authorizers[component]), component)
	}
}
