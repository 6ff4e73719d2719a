package main

import (
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The day's token fetches come from each app's own interval between
// fetches, not from the window's count: a window that holds a burst of
// every app's fetches at each end counts one fetch an app too many.
func TestCallCounterTokensFromIntervals(t *testing.T) {
	c := &callCounter{fetches: map[string][]time.Time{}, paths: map[string]int{}}
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	period := 100 * time.Second
	for _, app := range []string{"a", "b"} {
		for i := range 3 { // at 0, 100 and 200 s: three in a window of 200 s
			c.fetches[app] = append(c.fetches[app], t0.Add(time.Duration(i)*period))
		}
	}
	c.paths["/cgi-bin/token"] = 6
	c.paths["/cgi-bin/openapi/quota/get"] = 4
	day := 1000 * time.Second
	_, perDay, tokens := c.stop(200*time.Second, day)
	if want := 2 * 10.0; math.Abs(tokens-want) > 1e-9 || perDay["/cgi-bin/token"] != tokens {
		t.Errorf("token fetches a day = %v (path %v), want %v: one every 100 s of a 1000 s day, two apps", tokens, perDay["/cgi-bin/token"], want)
	}
	if want := 4 * 1000.0 / 200; perDay["/cgi-bin/openapi/quota/get"] != want {
		t.Errorf("quota/get a day = %v, want %v, the window's count scaled to the day", perDay["/cgi-bin/openapi/quota/get"], want)
	}
}

// Calls made before the window starts are not counted.
func TestCallCounterCountsOnlyInTheWindow(t *testing.T) {
	c := &callCounter{fetches: map[string][]time.Time{}, paths: map[string]int{}}
	h := c.wrap(http200{})
	serve(h, "/cgi-bin/token?appid=a")
	c.start()
	serve(h, "/cgi-bin/token?appid=a")
	serve(h, "/cgi-bin/openapi/quota/get")
	in, _, _ := c.stop(time.Second, time.Second)
	if in["/cgi-bin/token"] != 1 || in["/cgi-bin/openapi/quota/get"] != 1 || len(c.fetches["a"]) != 1 {
		t.Errorf("counted %v and fetches %v, want one call to each path, the one before the window left out", in, c.fetches)
	}
}

type http200 struct{}

func (http200) ServeHTTP(w http.ResponseWriter, r *http.Request) {}

func serve(h http.Handler, target string) {
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, target, nil))
}
