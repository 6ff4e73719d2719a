package publisher

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxtoken/wxtoken/kv"
)

// exposed returns the series lines a scrape of c shows, without comments.
func exposed(t *testing.T, c *appCounters) []string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.PanicOnError}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var series []string
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			series = append(series, line)
		}
	}
	return series
}

func TestAppCountersCountForgetAndExpose(t *testing.T) {
	c := newAppCounters("wxtoken_test_calls_total", "Calls.", "api", "result")
	for range 3 {
		c.inc("wxA", "token", "ok")
	}
	c.inc("wxA", "check", "valid")
	c.inc("wxA", "stable_token_force", "ok")
	c.inc("wxB", "token", "retry")

	c.forget("wxA", "check", "stable_token_force")
	want := []string{
		`wxtoken_test_calls_total{api="token",appid="wxA",result="ok"} 3`,
		`wxtoken_test_calls_total{api="token",appid="wxB",result="retry"} 1`,
	}
	if got := exposed(t, c); !slices.Equal(got, want) {
		t.Fatalf("scrape shows\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	c.forget("wxA", "token")
	c.forget("wxB")
	if got := exposed(t, c); len(got) != 0 {
		t.Fatalf("series left after every app's were forgotten: %q", got)
	}
}

func TestAppCountersWithTheAppidAlone(t *testing.T) {
	c := newAppCounters("wxtoken_test_ended_total", "Ended.")
	c.inc("wxA")
	c.inc("wxA")
	want := []string{`wxtoken_test_ended_total{appid="wxA"} 2`}
	if got := exposed(t, c); !slices.Equal(got, want) {
		t.Fatalf("scrape shows %q, want %q", got, want)
	}
}

// TestForgettingAnAppsTokenDropsItsAppWideCalls: the calls made for an app
// as a whole (its quota questions, rid lookups and quota resets among
// them) go when a reload removes the app, and another app's stay.
func TestForgettingAnAppsTokenDropsItsAppWideCalls(t *testing.T) {
	m := newMetrics(nil, nil)
	for _, api := range append([]string{"token", "jsapi_ticket"}, appCalls...) {
		m.UpstreamCall("wxA", api, "ok", time.Millisecond)
	}
	m.UpstreamCall("wxB", "quota_get", "ok", time.Millisecond)

	m.Forget("wxA.jsapi_ticket", "jsapi_ticket", "jsapi_ticket")
	m.Forget("wxA", kv.KindToken, "token")
	want := []string{`wxtoken_upstream_requests_total{api="quota_get",appid="wxB",result="ok"} 1`}
	if got := exposed(t, m.upstream); !slices.Equal(got, want) {
		t.Fatalf("after wxA was forgotten a scrape shows\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
