package agent

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxtoken/wxtoken/internal/failover"
	"github.com/wxtoken/wxtoken/subscriber"
)

// metrics are the agent's Prometheus metrics. No label holds a token, a
// URL or a client's name: path classes and outcomes only.
type metrics struct {
	requests  *prometheus.CounterVec
	proxy     prometheus.Histogram
	retries   prometheus.Counter
	refreshes *prometheus.CounterVec
	polls     prometheus.Gauge
	secrets   *prometheus.CounterVec // path
	apiCalls  *prometheus.CounterVec // appid, path, class
	apiTime   *prometheus.HistogramVec
	handler   http.Handler
}

func newMetrics(reg *prometheus.Registry, wechat *failover.Bases) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_agent_requests_total",
			Help: "Requests to the agent, by path class (read, refresh, jssdk, wechat_token, wechat_ticket, login, proxy, ops, bad, other) and outcome.",
		}, []string{"class", "outcome"}),
		proxy: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wxtoken_agent_proxy_duration_seconds",
			Help:    "Time of a proxied WeChat call, from sending it to WeChat's answer, a retry included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxtoken_agent_proxy_retries_total",
			Help: "Proxied calls sent again with a new token after WeChat rejected the one used (40001, 40014, 42001).",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_agent_refreshes_total",
			Help: "Refreshes the agent asked the refresher for, by outcome (ok, rate_limited, upstream, unknown_key, unavailable).",
		}, []string{"outcome"}),
		polls: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxtoken_agent_long_polls",
			Help: "Long polls waiting for a new value.",
		}),
		secrets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_agent_requests_with_secret_total",
			Help: "Requests that carried a secret (secret, appsecret, corpsecret, component_appsecret; on a login path component_access_token too), by path (a path the agent answers itself, /v1/, or proxy for a forwarded call): a service that still holds the secret sent each; a WARN line (once a minute per client, path and parameter) names it.",
		}, []string{"path"}),
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_agent_api_calls_total",
			Help: "Calls the proxy made to WeChat (a retry with a new token is a call), by app, API path (the first 500 paths the agent forwarded; later ones, and paths that are no API path, are \"other\") and class of the answer (ok, token, quota, config, retry, other; http_error: an HTTP status of 400 or more; no_answer).",
		}, []string{"appid", "path", "class"}),
		apiTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxtoken_agent_api_call_seconds",
			Help:    "Time of one call the proxy made to WeChat, from sending it to WeChat's answer's headers (and its errcode, when it is a short JSON answer), by API path as wxtoken_agent_api_calls_total.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"path"}),
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reg.MustRegister(m.requests, m.proxy, m.retries, m.refreshes, m.polls, m.secrets, m.apiCalls, m.apiTime, wechat.Collector("wxtoken_agent_upstream"))
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m
}

func (m *metrics) observe(x *exchange) {
	m.requests.WithLabelValues(x.class, x.outcome).Inc()
}

func (m *metrics) proxied(d time.Duration) { m.proxy.Observe(d.Seconds()) }

func (m *metrics) apiCall(appid, path, class string, d time.Duration) {
	m.apiCalls.WithLabelValues(appid, path, class).Inc()
	m.apiTime.WithLabelValues(path).Observe(d.Seconds())
}

func (m *metrics) retried() { m.retries.Inc() }

func (m *metrics) refreshed(err error) {
	outcome := "ok"
	switch {
	case err == nil:
	case errors.Is(err, subscriber.ErrRateLimited):
		outcome = "rate_limited"
	case errors.Is(err, subscriber.ErrUpstream):
		outcome = "upstream"
	case errors.Is(err, subscriber.ErrUnknownApp):
		outcome = "unknown_key"
	default:
		outcome = "unavailable"
	}
	m.refreshes.WithLabelValues(outcome).Inc()
}
