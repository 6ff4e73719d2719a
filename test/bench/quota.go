package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
)

// fastClock runs speed times faster than real time, from a chosen start.
type fastClock struct {
	realStart, start time.Time
	speed            float64
}

func (c fastClock) Now() time.Time {
	return c.start.Add(time.Duration(float64(time.Since(c.realStart)) * c.speed))
}

func (c fastClock) AfterFunc(d time.Duration, f func()) *time.Timer {
	return time.AfterFunc(time.Duration(float64(d)/c.speed), f)
}

// quotaResult is one simulated day.
type quotaResult struct {
	calls, floor    int     // wxtoken's upstream calls; ceil(86400 / usable lifetime)
	validShare      float64 // share of minutes in which services held a working token
	naiveCalls      int     // ten instances that each fetch every 2h
	naiveValidShare float64 // share of instance-minutes with a working token
	taken           time.Duration
}

// quotaDay runs the real refresher with its default settings through one
// day of WeChat time, on a clock speed times faster than real time; and,
// in the same day, ten naive instances that each fetch a token every two
// hours. Every simulated minute it asks the fake WeChat whether the tokens
// in use still work.
func quotaDay(speed float64) quotaResult {
	china := time.FixedZone("UTC+8", 8*3600)
	clock := fastClock{realStart: time.Now(), start: time.Date(2026, 11, 22, 0, 0, 0, 0, china), speed: speed}
	const day = 24 * time.Hour
	fake := fakewechat.New(fakewechat.Config{Now: clock.Now}) // 7200s tokens, 5 min overlap, 2000 a day
	fake.AddApp(benchApp, "bench-secret")
	const naiveApp = "wxnaive00000000001"
	fake.AddApp(naiveApp, "naive-secret")
	wechat := httptest.NewServer(fake)
	defer wechat.Close()

	dir, _ := os.MkdirTemp("", "wxtoken-bench-quota")
	defer os.RemoveAll(dir)
	opts, _ := embedded.Options("127.0.0.1:-1", dir)
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	r, err := publisher.New(nc, publisher.Config{
		Apps:        []publisher.App{{AppID: benchApp, Secret: publisher.NewSecret("bench-secret")}},
		UpstreamURL: wechat.URL, Clock: publisher.Clock{Now: clock.Now, AfterFunc: clock.AfterFunc},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	sub, err := subscriber.New(sctx, nc, benchApp)
	scancel()
	if err != nil {
		log.Fatal(err)
	}

	// The naive way: each instance fetches its own token every two hours,
	// at its own phase, and uses it until its next fetch.
	naive := make([]string, 10)
	var naiveMu sync.Mutex
	naiveCalls := 0
	for i := range naive {
		phase := time.Duration(rand.Int64N(int64(2 * time.Hour)))
		var fetch func()
		fetch = func() {
			token, err := fetchItself(wechat.URL, naiveApp, "naive-secret")
			naiveMu.Lock()
			naiveCalls++
			if err == nil {
				naive[i] = token
			}
			naiveMu.Unlock()
			if ctx.Err() == nil {
				clock.AfterFunc(2*time.Hour, fetch)
			}
		}
		clock.AfterFunc(phase, fetch)
	}

	// Sample every simulated minute until the day is over.
	minutes, valid, naiveSamples, naiveValid := 0, 0, 0, 0
	end := clock.start.Add(day)
	for next := clock.start.Add(time.Minute); next.Before(end); next = next.Add(time.Minute) {
		time.Sleep(time.Duration(float64(next.Sub(clock.Now())) / speed)) // pacing the sampler on the simulated clock
		minutes++
		if ok, _ := fake.Valid(sub.Token().Value); ok {
			valid++
		}
		naiveMu.Lock()
		for _, tok := range naive {
			if tok == "" {
				continue // not started yet
			}
			naiveSamples++
			if ok, _ := fake.Valid(tok); ok {
				naiveValid++
			}
		}
		naiveMu.Unlock()
		progress("quota: %s of 24h simulated", next.Sub(clock.start).Round(time.Hour))
	}
	calls := fake.Calls(benchApp)
	naiveMu.Lock()
	nCalls := naiveCalls
	naiveMu.Unlock()
	cancel()
	sub.Close()
	<-done
	usable := 7200 - publisher.DefaultRefreshBefore.Seconds()
	return quotaResult{
		calls: calls, floor: int(math.Ceil(day.Seconds() / usable)),
		validShare: float64(valid) / float64(minutes), naiveCalls: nCalls,
		naiveValidShare: float64(naiveValid) / float64(naiveSamples),
		taken:           time.Since(clock.realStart),
	}
}

// fetchItself fetches a token the way an instance that keeps its own does:
// a GET of /cgi-bin/token.
func fetchItself(base, appid, secret string) (string, error) {
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appid}, "secret": {secret}}
	resp, err := http.Get(base + "/cgi-bin/token?" + q.Encode())
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var answer struct {
		AccessToken string `json:"access_token"`
		ErrCode     int    `json:"errcode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return "", err
	}
	if answer.AccessToken == "" {
		return "", fmt.Errorf("errcode %d", answer.ErrCode)
	}
	return answer.AccessToken, nil
}
