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
	kinds           []kindDay
	taken           time.Duration
}

// kindDay is one credential kind's simulated day.
type kindDay struct {
	kind         string
	calls, floor int
	validShare   float64 // share of minutes in which services held a working value
	floorRule    string
}

// The apps of the simulated day beside benchApp (a classic app, with a
// jsapi ticket): a stable_token app and a WeCom app secret.
const (
	quotaStableApp = "wxstable0000000001"
	quotaCorp      = "ww0000000000000001"
	quotaAgent     = "1000002"
)

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
	fake.AddApp(quotaStableApp, "stable-secret")
	fake.AddWeComApp(quotaCorp, quotaAgent, "wecom-secret")
	wecomKey := quotaCorp + "-" + quotaAgent
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
		Apps: []publisher.App{
			{AppID: benchApp, Secret: publisher.NewSecret("bench-secret"), Tickets: []publisher.Ticket{publisher.TicketJSAPI}},
			{AppID: quotaStableApp, Secret: publisher.NewSecret("stable-secret"), TokenAPI: publisher.TokenAPIStable},
			{CorpID: quotaCorp, Agent: quotaAgent, Secret: publisher.NewSecret("wecom-secret")},
		},
		UpstreamURL: wechat.URL, WeComURL: wechat.URL, Clock: publisher.Clock{Now: clock.Now, AfterFunc: clock.AfterFunc},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	follow := func(key string) *subscriber.Subscriber {
		sctx, scancel := context.WithTimeout(ctx, time.Minute)
		defer scancel()
		sub, err := subscriber.New(sctx, nc, key)
		if err != nil {
			log.Fatal(err)
		}
		return sub
	}
	sub := follow(benchApp)
	others := []struct {
		kind          string
		sub           *subscriber.Subscriber
		valid         func(string) bool
		valids, calls int
	}{
		{kind: "jsapi_ticket", sub: follow(benchApp + ".jsapi_ticket"), valid: func(v string) bool {
			t, ok := fake.Ticket(benchApp, "jsapi")
			return ok && t == v
		}},
		{kind: "stable_token", sub: follow(quotaStableApp), valid: func(v string) bool { ok, _ := fake.Valid(v); return ok }},
		{kind: "wecom_token", sub: follow(wecomKey), valid: func(v string) bool { ok, _ := fake.Valid(v); return ok }},
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
		for i := range others {
			if others[i].valid(others[i].sub.Token().Value) {
				others[i].valids++
			}
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
	ticketCalls, _, _ := fake.TicketCalls(benchApp, "jsapi")
	others[0].calls, others[1].calls, others[2].calls = ticketCalls, fake.Calls(quotaStableApp), fake.Calls(wecomKey)
	naiveMu.Lock()
	nCalls := naiveCalls
	naiveMu.Unlock()
	cancel()
	sub.Close()
	for _, o := range others {
		o.sub.Close()
	}
	<-done
	usable := 7200 - publisher.DefaultRefreshBefore.Seconds()
	floor := int(math.Ceil(day.Seconds() / usable))
	q := quotaResult{
		calls: calls, floor: floor,
		validShare: float64(valid) / float64(minutes), naiveCalls: nCalls,
		naiveValidShare: float64(naiveValid) / float64(naiveSamples),
		taken:           time.Since(clock.realStart),
	}
	q.kinds = append(q.kinds, kindDay{"access_token", calls, floor, q.validShare, "ceil(86400 / (7200-600)): a new one within the refresh window"})
	// A stable token can be renewed only in its last 5 minutes; a ticket
	// and a WeCom token only once they expired: one call per lifetime
	// (less the 5 minutes) is all any cache could make.
	floors := map[string]struct {
		usable float64
		rule   string
	}{
		"jsapi_ticket": {7200, "ceil(86400 / 7200): the same ticket until it expires"},
		"stable_token": {7200 - 300, "ceil(86400 / (7200-300)): renewable only in its last 5 min"},
		"wecom_token":  {7200, "ceil(86400 / 7200): the same token until it expires"},
	}
	for _, o := range others {
		f := floors[o.kind]
		q.kinds = append(q.kinds, kindDay{o.kind, o.calls, int(math.Ceil(day.Seconds() / f.usable)), float64(o.valids) / float64(minutes), f.rule})
	}
	return q
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
