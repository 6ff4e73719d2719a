package failover

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// clock is a time a test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newBases(t *testing.T, list string) (*Bases, *clock, *bytes.Buffer) {
	t.Helper()
	urls, err := Parse(list)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	var logs bytes.Buffer
	b, err := New(Config{URLs: urls, Recheck: time.Minute, API: "WeChat", Now: c.now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b, c, &logs
}

func host(c Call) string { return c.URL().Host }

func TestOneFailureStaysTwoInARowMove(t *testing.T) {
	b, _, logs := newBases(t, "https://api.weixin.qq.com, https://api2.weixin.qq.com")
	b.Pick().Failed("HTTP 502")
	if got := host(b.Pick()); got != "api.weixin.qq.com" {
		t.Fatalf("after one failure calls go to %s, want api.weixin.qq.com still", got)
	}
	b.Pick().Succeeded() // a success in between: the count starts over
	b.Pick().Failed("HTTP 502")
	if got := host(b.Pick()); got != "api.weixin.qq.com" {
		t.Fatalf("after failure, success, failure calls go to %s, want api.weixin.qq.com still", got)
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Fatalf("a warning before two failures in a row:\n%s", logs)
	}
	b.Pick().Failed("no answer: i/o timeout")
	if got := host(b.Pick()); got != "api2.weixin.qq.com" {
		t.Fatalf("after two failures in a row calls go to %s, want api2.weixin.qq.com", got)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="WeChat's API base failed 2 times in a row: calls go to the next base" base=https://api.weixin.qq.com next=https://api2.weixin.qq.com error="no answer: i/o timeout"`) {
		t.Fatalf("no warning of the move:\n%s", logs)
	}
	h := b.Health()
	if h[0].Up || h[0].Current || h[0].Failures != 3 || !h[1].Up || !h[1].Current || h[1].Failures != 0 {
		t.Fatalf("health %+v", h)
	}
}

func TestCallsStayWhileTheNextWorksAndTryTheFirstAfterRecheck(t *testing.T) {
	b, clk, logs := newBases(t, "https://api.weixin.qq.com,https://api2.weixin.qq.com")
	b.Pick().Failed("HTTP 503")
	b.Pick().Failed("HTTP 503")
	clk.add(time.Minute - time.Second)
	for range 10 {
		c := b.Pick()
		if host(c) != "api2.weixin.qq.com" {
			t.Fatalf("before the recheck a call went to %s", host(c))
		}
		c.Succeeded()
	}

	clk.add(time.Second)
	try := b.Pick()
	if host(try) != "api.weixin.qq.com" {
		t.Fatalf("after the recheck the first call goes to %s, want the first base", host(try))
	}
	// While one call tries the first base, the others stay where calls work.
	if got := host(b.Pick()); got != "api2.weixin.qq.com" {
		t.Fatalf("a second call during the try went to %s", got)
	}
	try.Failed("HTTP 503")
	if got := host(b.Pick()); got != "api2.weixin.qq.com" {
		t.Fatalf("after a failed try calls go to %s, want api2 still", got)
	}
	clk.add(time.Minute - time.Second)
	if got := host(b.Pick()); got != "api2.weixin.qq.com" {
		t.Fatalf("a failed try is followed by another only a recheck later; got %s", got)
	}
	clk.add(time.Second)
	try = b.Pick()
	if host(try) != "api.weixin.qq.com" {
		t.Fatalf("the second try went to %s", host(try))
	}
	try.Succeeded()
	if got := host(b.Pick()); got != "api.weixin.qq.com" {
		t.Fatalf("after a good try calls go to %s, want the first base", got)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="WeChat's first API base answers again: calls go back to it" base=https://api.weixin.qq.com from=https://api2.weixin.qq.com`) {
		t.Fatalf("no info line of the return:\n%s", logs)
	}
	if h := b.Health(); !h[0].Up || !h[0].Current || h[1].Current {
		t.Fatalf("health %+v", h)
	}
}

func TestAbandonedTryLetsAnotherCallTry(t *testing.T) {
	b, clk, _ := newBases(t, "https://api.weixin.qq.com,https://api2.weixin.qq.com")
	b.Pick().Failed("x")
	b.Pick().Failed("x")
	clk.add(time.Minute)
	b.Pick().Abandoned()
	if got := host(b.Pick()); got != "api.weixin.qq.com" {
		t.Fatalf("after an abandoned try the next call goes to %s, want another try of the first base", got)
	}
}

func TestAFailureFromBeforeTheMoveDoesNotMoveAgain(t *testing.T) {
	b, _, _ := newBases(t, "https://api.weixin.qq.com,https://api2.weixin.qq.com")
	late := []Call{b.Pick(), b.Pick(), b.Pick()} // three calls under way on the first base
	late[0].Failed("x")
	late[1].Failed("x")
	late[2].Failed("x") // its third failure in a row: calls are already on api2
	b.Pick().Failed("x")
	if got := host(b.Pick()); got != "api2.weixin.qq.com" {
		t.Fatalf("calls go to %s: late failures of the first base or one of api2 moved them", got)
	}
}

func TestTheLastBaseGivesWayToTheFirst(t *testing.T) {
	b, _, _ := newBases(t, "https://api.weixin.qq.com,https://api2.weixin.qq.com,https://hk.api.weixin.qq.com")
	for _, want := range []string{"api2.weixin.qq.com", "hk.api.weixin.qq.com", "api.weixin.qq.com"} {
		b.Pick().Failed("x")
		b.Pick().Failed("x")
		if got := host(b.Pick()); got != want {
			t.Fatalf("calls go to %s, want %s", got, want)
		}
	}
}

func TestASingleBaseStays(t *testing.T) {
	b, _, logs := newBases(t, "http://127.0.0.1:8181")
	for range 5 {
		b.Pick().Failed("x")
	}
	if got := host(b.Pick()); got != "127.0.0.1:8181" || strings.Contains(logs.String(), "WARN") {
		t.Fatalf("a single base: calls go to %s; logs:\n%s", got, logs)
	}
}

func TestFailing(t *testing.T) {
	for _, c := range []struct {
		status, errcode int
		want            bool
	}{{500, 0, true}, {502, 0, true}, {200, -1, true}, {200, 0, false}, {404, 0, false}, {429, 0, false}, {200, 40001, false}, {200, 45009, false}, {200, 45011, false}} {
		if Failing(c.status, c.errcode) != c.want {
			t.Errorf("Failing(%d, %d) = %v", c.status, c.errcode, !c.want)
		}
	}
}

func TestParseNamesTheBadEntry(t *testing.T) {
	for list, want := range map[string]string{
		"https://api.weixin.qq.com,ftp://api2.weixin.qq.com":    `entry 2: "ftp://api2.weixin.qq.com" is not an http(s) URL`,
		"https://api.weixin.qq.com,,https://api2.weixin.qq.com": "entry 2 of",
		"https://user:pw@api.weixin.qq.com":                     `entry 1: "https://user:xxxxx@api.weixin.qq.com" must be a scheme, a host and at most a path`,
		"https://api.weixin.qq.com?x=1":                         "entry 1: ",
		"https:///cgi-bin":                                      `entry 1: "https:///cgi-bin" has no host`,
	} {
		_, err := Parse(list)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", list, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "pw@") {
			t.Errorf("Parse(%q) printed the password: %v", list, err)
		}
	}
	urls, err := Parse(" https://api.weixin.qq.com , https://api2.weixin.qq.com")
	if err != nil || len(urls) != 2 || urls[1].Host != "api2.weixin.qq.com" {
		t.Fatalf("Parse = %v, %v", urls, err)
	}
}

func TestCollector(t *testing.T) {
	b, _, _ := newBases(t, "https://api.weixin.qq.com,https://api2.weixin.qq.com")
	b.Pick().Failed("x")
	b.Pick().Failed("x")
	reg := prometheus.NewRegistry()
	reg.MustRegister(b.Collector("wxtoken_upstream"))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			got[f.GetName()+" "+m.GetLabel()[0].GetValue()] = v
		}
	}
	want := map[string]float64{
		"wxtoken_upstream_base_current https://api.weixin.qq.com":         0,
		"wxtoken_upstream_base_current https://api2.weixin.qq.com":        1,
		"wxtoken_upstream_base_up https://api.weixin.qq.com":              0,
		"wxtoken_upstream_base_up https://api2.weixin.qq.com":             1,
		"wxtoken_upstream_base_failures_total https://api.weixin.qq.com":  2,
		"wxtoken_upstream_base_failures_total https://api2.weixin.qq.com": 0,
	}
	if len(got) != len(want) {
		t.Fatalf("metrics %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
