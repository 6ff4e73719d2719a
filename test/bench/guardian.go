package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// Part "guardian": issue 22's simulated day of a foreign fetcher. Another
// party holding benchApp's AppSecret fetches a token every 2 simulated
// hours, killing wxtoken's, while three `wxtoken serve` replicas, one
// `wxtoken agent` and a NATS server run as processes of their own, and a
// service reads the token from the agent and calls WeChat through the
// agent's proxy. The same day has three leader failovers (SIGKILL) and a
// NATS restart. A second, shorter day with --quota-every 0 (a service's
// 40001 is then the only way wxtoken learns of a dead token) is the
// baseline.
//
// The processes run on the real clock, so the day is scaled rather than
// the clock: one simulated hour is -guardian-hour of real time, and every
// duration of WeChat's and wxtoken's is scaled with it (guardianScale).

// guardianScale is the durations of one run, all derived from the length
// of a simulated hour.
type guardianScale struct {
	hour          time.Duration // one simulated hour
	expiresIn     time.Duration // a token's lifetime: 2 simulated hours, as WeChat's 7200 s
	overlap       time.Duration // a replaced token works 5 simulated minutes more, as WeChat's
	refreshBefore time.Duration // serve's --refresh-before: 10 simulated minutes, at least 2 s
	quotaEvery    time.Duration // serve's --quota-every: 1 simulated hour
	minForce      time.Duration // serve's --min-force-interval: 30 simulated seconds, as its default
	serviceEvery  time.Duration // the service takes the token and calls WeChat every 2 simulated minutes
}

// The refresher's flags that cannot follow the scale: --lease-ttl is at
// least 1 s (so a failover takes about 1 s, 6 simulated minutes at 10 s an
// hour), --upstream-timeout at most half of it, and the refresh check runs
// at most once a second (the cron's @every rounds up to 1 s), so a refresh
// window under 2 s could pass between two checks.
const (
	guardianLeaseTTL        = time.Second
	guardianUpstreamTimeout = 500 * time.Millisecond
	guardianSchedule        = "@every 1s"
	guardianMinRefresh      = 2 * time.Second
)

func scaleOf(hour time.Duration) guardianScale {
	return guardianScale{hour: hour, expiresIn: 2 * hour, overlap: hour / 12,
		refreshBefore: max(hour/6, guardianMinRefresh), quotaEvery: hour, minForce: hour / 120, serviceEvery: hour / 30}
}

// The day's plan, in simulated time: a foreign fetch at 0:40 and every 2
// hours after (out of phase with wxtoken's rotations, every 1:50), and
// each disturbance at 1:45 of a two-hour slot, after the slot's foreign
// fetch was reported and its token's death recovered from. The 50
// simulated minutes after a disturbance, before the next foreign fetch, are
// a control window: no report of another party is due in it.
const (
	foreignPhase   = 40 * time.Minute
	foreignEvery   = 2 * time.Hour
	disturbPhase   = 105 * time.Minute
	controlWindow  = 50 * time.Minute
	guardianMinDay = 12 // simulated hours: six slots, four of them disturbed
)

// disturbance is one failover or NATS restart of the day.
type disturbance struct {
	at   time.Duration // simulated time
	nats bool          // a NATS restart; else a SIGKILL of the leader
}

// guardianPlan returns the day's foreign fetches and disturbances, in
// simulated time: three failovers and a NATS restart spread over the day
// when disturb is set.
func guardianPlan(hours int, disturb bool) (fetches []time.Duration, disturbances []disturbance) {
	day := time.Duration(hours) * time.Hour
	for at := foreignPhase; at < day; at += foreignEvery {
		fetches = append(fetches, at)
	}
	if !disturb {
		return fetches, nil
	}
	slots := len(fetches)
	for i, nats := range []bool{false, false, true, false} {
		slot := 1 + i*(slots-3)/3
		disturbances = append(disturbances, disturbance{at: time.Duration(slot)*foreignEvery + disturbPhase, nats: nats})
	}
	return fetches, disturbances
}

// guardianDay is what one simulated day measured.
type guardianDay struct {
	hours                   int
	fetches                 int             // foreign fetches made
	reported                int             // of them, reported by a foreign_fetch event
	delays                  []time.Duration // from each reported foreign fetch to its event, real time
	delayOf                 []string        // each report: the fetch's simulated time and its delay
	foreignEvents           int             // foreign_fetch events
	elsewhere               int             // invalidated_elsewhere events
	falseReports            []string        // why each false report was one
	spells                  []time.Duration // each time the service held a dead token, real time
	spellOf                 []string        // each spell: when it began (simulated), WeChat's errcode, how long
	samples, unreadable     int             // the service's reads of the token; those the agent did not answer
	failovers, natsRestarts int
	took                    time.Duration
}

func (d guardianDay) longestSpell() time.Duration {
	if len(d.spells) == 0 {
		return 0
	}
	return slices.Max(d.spells)
}

// guardianResult is part guardian's two days.
type guardianResult struct {
	scale         guardianScale
	day, baseline guardianDay
}

// guardianBench runs the day (with the quota poller, failovers and a NATS
// restart) and the baseline day (no poller, no disturbance).
func guardianBench(hour time.Duration, hours, baselineHours int) guardianResult {
	if hours < guardianMinDay || hours%2 != 0 {
		fatalf("guardian: -guardian-hours %d: give an even number of at least %d (six two-hour slots, four of them disturbed)", hours, guardianMinDay)
	}
	if baselineHours < 2 {
		fatalf("guardian: -guardian-baseline-hours %d: give at least 2 (one foreign fetch)", baselineHours)
	}
	s := scaleOf(hour)
	dir, err := os.MkdirTemp("", "wxtoken-bench-guardian")
	if err != nil {
		fatalf("guardian: %v", err)
	}
	defer os.RemoveAll(dir)
	progress("guardian: building cmd/wxtoken")
	binary := filepath.Join(dir, "wxtoken")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/wxtoken/wxtoken/cmd/wxtoken").CombinedOutput(); err != nil {
		fatalf("go build of cmd/wxtoken (run the benchmark from the repository root): %v\n%s", err, out)
	}
	day := runGuardianDay(binary, filepath.Join(dir, "day"), s, hours, s.quotaEvery, true)
	baseline := runGuardianDay(binary, filepath.Join(dir, "baseline"), s, baselineHours, 0, false)
	return guardianResult{scale: s, day: day, baseline: baseline}
}

// guardianRig is one day's processes and what they saw.
type guardianRig struct {
	dir, binary, apps, natsAddr, wechatURL string
	scale                                  guardianScale
	quotaEvery                             time.Duration
	fake                                   *fakewechat.Server
	start                                  time.Time // simulated 0:00

	nats     *process
	replicas map[string]*process // by --instance, the ones running
	started  int

	mu        sync.Mutex
	fetchedAt []time.Time // the foreign fetches, when each was sent
	controls  [][2]time.Time
	maxOthers int64
	result    guardianDay
}

// runGuardianDay runs one simulated day of hours with the refresher's
// --quota-every quotaEvery (0: off), and the failovers and NATS restart
// when disturb is set.
func runGuardianDay(binary, dir string, s guardianScale, hours int, quotaEvery time.Duration, disturb bool) guardianDay {
	name := "baseline"
	if disturb {
		name = "day"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fatalf("guardian: %v", err)
	}
	g := &guardianRig{dir: dir, binary: binary, scale: s, quotaEvery: quotaEvery, replicas: map[string]*process{}}
	g.fake = fakewechat.New(fakewechat.Config{ExpiresIn: s.expiresIn, Overlap: s.overlap})
	g.fake.AddApp(benchApp, benchSecret)
	wechat := httptest.NewServer(g.fake)
	defer wechat.Close()
	g.wechatURL = wechat.URL
	g.apps = filepath.Join(dir, "apps.yaml")
	if err := os.WriteFile(g.apps, fmt.Appendf(nil, "apps:\n  - appid: %s\n    secret: %s\n", benchApp, benchSecret), 0o600); err != nil {
		fatalf("guardian: %v", err)
	}

	g.natsAddr = freePort()
	g.startNATS()
	defer func() { g.nats.stop() }()
	nc, err := nats.Connect("nats://"+g.natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		fatalf("guardian: %v", err)
	}
	defer nc.Close()
	events, err := nc.Subscribe(kv.Subjects{}.Failed(benchApp), g.judge)
	if err != nil {
		fatalf("guardian: %v", err)
	}
	defer events.Unsubscribe()
	js, _ := jetstream.New(nc)

	progress("guardian %s: starting three replicas and the agent", name)
	for range 3 {
		g.startReplica()
	}
	defer func() {
		for _, p := range g.replicas {
			p.stop()
		}
	}()
	agent := startAgent(binary, dir, "nats://"+g.natsAddr, wechat.URL)
	defer agent.stop()

	fetches, disturbances := guardianPlan(hours, disturb)
	g.start = time.Now()
	end := g.real(time.Duration(hours) * time.Hour)
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	served := make(chan struct{})
	go func() {
		defer close(served)
		g.serve(ctx, agent.addr)
	}()

	type action struct {
		at time.Duration
		do func()
	}
	var plan []action
	for _, at := range fetches {
		plan = append(plan, action{at, g.foreignFetch})
	}
	for _, d := range disturbances {
		do := func() { g.failover(ctx, js) }
		if d.nats {
			do = g.restartNATS
		}
		plan = append(plan, action{d.at, func() {
			g.mu.Lock()
			now := time.Now()
			g.controls = append(g.controls, [2]time.Time{now, now.Add(g.scaled(controlWindow))})
			g.mu.Unlock()
			do()
		}})
	}
	slices.SortFunc(plan, func(a, b action) int { return int(a.at - b.at) })
	for _, a := range plan {
		progress("guardian %s: %s of %dh simulated", name, a.at.Round(time.Minute), hours)
		time.Sleep(time.Until(g.real(a.at))) // pacing the plan on the simulated clock
		a.do()
	}
	<-served
	for name, p := range g.replicas {
		if p.exited() {
			out, _ := os.ReadFile(p.log)
			fatalf("guardian: replica %s exited during the day:\n%s", name, out)
		}
	}
	if agent.exited() {
		out, _ := os.ReadFile(agent.log)
		fatalf("guardian: the agent exited during the day:\n%s", out)
	}
	fmt.Fprintln(stderr)

	g.mu.Lock()
	defer g.mu.Unlock()
	g.result.hours = hours
	g.result.took = time.Since(g.start)
	return g.result
}

// real is the moment of simulated time at.
func (g *guardianRig) real(at time.Duration) time.Time { return g.start.Add(g.scaled(at)) }

// scaled is the real length of simulated d.
func (g *guardianRig) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) / float64(time.Hour) * float64(g.scale.hour))
}

// startNATS runs a NATS server with JetStream in its own process (this
// program's role "nats"), storing in the day's directory, on the day's
// address, and waits until it accepts clients.
func (g *guardianRig) startNATS() {
	self, err := os.Executable()
	if err != nil {
		fatalf("guardian: %v", err)
	}
	cmd := exec.Command(self, "-role", "nats", "-nats", g.natsAddr, "-store", filepath.Join(g.dir, "nats"))
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		fatalf("guardian: %v", err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || strings.TrimSpace(line) != "READY" {
		fatalf("guardian: the NATS process did not start: %q %v", line, err)
	}
	g.nats = track(&process{cmd: cmd, addr: g.natsAddr})
}

// restartNATS stops the NATS process (SIGTERM) and starts it again on the
// same address and store: the replicas and the agent reconnect.
func (g *guardianRig) restartNATS() {
	g.nats.stop()
	g.startNATS()
	g.mu.Lock()
	g.result.natsRestarts++
	g.mu.Unlock()
}

// startReplica starts one more `wxtoken serve` replica.
func (g *guardianRig) startReplica() {
	g.started++
	name := fmt.Sprintf("replica-%d", g.started)
	g.replicas[name] = startLogged(g.dir, name, g.binary, "serve", "--nats-url", "nats://"+g.natsAddr,
		"--apps", g.apps, "--wechat-base-url", g.wechatURL, "--instance", name,
		"--schedule", guardianSchedule, "--refresh-before", g.scale.refreshBefore.String(),
		"--lease-ttl", guardianLeaseTTL.String(), "--upstream-timeout", guardianUpstreamTimeout.String(),
		"--quota-every", g.quotaEvery.String(), "--min-force-interval", g.scale.minForce.String())
}

// failover SIGKILLs the replica holding the lease and starts a new one, to
// keep three.
func (g *guardianRig) failover(ctx context.Context, js jetstream.JetStream) {
	lease, err := js.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket))
	if err != nil {
		fatalf("guardian: the lease bucket: %v", err)
	}
	e, err := lease.Get(ctx, kv.LeaseKey)
	if err != nil {
		fatalf("guardian: the lease: %v", err)
	}
	h, err := kv.DecodeLeaseHolder(e.Value())
	if err != nil {
		fatalf("guardian: %v", err)
	}
	leader := g.replicas[h.Instance]
	if leader == nil {
		fatalf("guardian: the lease names %q, which is no replica running", h.Instance)
	}
	leader.cmd.Process.Signal(syscall.SIGKILL)
	leader.cmd.Wait()
	delete(g.replicas, h.Instance)
	g.startReplica()
	g.mu.Lock()
	g.result.failovers++
	g.mu.Unlock()
}

// foreignFetch is the other party: a GET of /cgi-bin/token with the app's
// secret, straight to WeChat, as a forgotten cron job would.
func (g *guardianRig) foreignFetch() {
	g.mu.Lock()
	g.fetchedAt = append(g.fetchedAt, time.Now())
	g.result.fetches++
	g.mu.Unlock()
	if _, err := fetchItself(g.wechatURL, benchApp, benchSecret); err != nil {
		fatalf("guardian: the foreign fetch: %v", err)
	}
}

// judge takes in one failure event of benchApp. A foreign_fetch event is
// false when it counts more foreign fetches than were made, or no more
// than an earlier event did (a repeat, say by a new leader); an
// invalidated_elsewhere event is false in a control window, or beyond one
// per foreign fetch.
func (g *guardianRig) judge(m *nats.Msg) {
	now := time.Now()
	var ev kv.FailureEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		fatalf("guardian: a failure event that is no JSON: %v", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	at := g.simulated(now)
	switch ev.Class {
	case kv.ClassForeignFetch:
		g.result.foreignEvents++
		made := int64(len(g.fetchedAt))
		switch {
		case ev.Others > made:
			g.result.falseReports = append(g.result.falseReports, fmt.Sprintf("%s: foreign_fetch counts %d, %d made", at, ev.Others, made))
		case ev.Others <= g.maxOthers:
			g.result.falseReports = append(g.result.falseReports, fmt.Sprintf("%s: foreign_fetch counts %d, reported already", at, ev.Others))
		default:
			for i := g.maxOthers; i < ev.Others; i++ {
				g.result.delays = append(g.result.delays, now.Sub(g.fetchedAt[i]))
				g.result.delayOf = append(g.result.delayOf, fmt.Sprintf("%s +%.1fs", g.simulated(g.fetchedAt[i]), now.Sub(g.fetchedAt[i]).Seconds()))
			}
			g.result.reported = int(ev.Others)
			g.maxOthers = ev.Others
		}
	case kv.ClassInvalidatedElsewhere:
		g.result.elsewhere++
		if g.result.elsewhere > len(g.fetchedAt) {
			g.result.falseReports = append(g.result.falseReports, fmt.Sprintf("%s: invalidated_elsewhere number %d, %d foreign fetches made", at, g.result.elsewhere, len(g.fetchedAt)))
		}
		for _, w := range g.controls {
			if !now.Before(w[0]) && now.Before(w[1]) {
				g.result.falseReports = append(g.result.falseReports, fmt.Sprintf("%s: invalidated_elsewhere in a control window", at))
			}
		}
	}
}

// simulated is the simulated time of the day at t.
func (g *guardianRig) simulated(t time.Time) time.Duration {
	return time.Duration(float64(t.Sub(g.start)) / float64(g.scale.hour) * float64(time.Hour)).Round(time.Minute)
}

// serve is the service, until ctx ends: every 2 simulated minutes it takes
// the token from the agent (GET /v1/credentials, as a PHP client would),
// asks the fake WeChat whether it works, and calls an API through the
// agent's proxy (whose 40001 makes the agent report the token: today's
// recovery). A spell of holding a dead token is counted from the last
// read that got a working one to the first that did again: an upper bound,
// to one read.
func (g *guardianRig) serve(ctx context.Context, agentAddr string) {
	client := &http.Client{Timeout: 2 * time.Second}
	ticker := time.NewTicker(g.scale.serviceEvery)
	defer ticker.Stop()
	var lastGood, deadSince time.Time
	var deadCode int
	for {
		select {
		case <-ctx.Done():
			if !deadSince.IsZero() {
				g.spell(deadSince, time.Now(), deadCode)
			}
			return
		case <-ticker.C:
		}
		token, ok := agentToken(client, agentAddr)
		now := time.Now()
		g.mu.Lock()
		g.result.samples++
		if !ok {
			g.result.unreadable++
		}
		g.mu.Unlock()
		if !ok {
			continue
		}
		if works, code := g.fake.Valid(token); works {
			if !deadSince.IsZero() {
				g.spell(deadSince, now, deadCode)
				deadSince = time.Time{}
			}
			lastGood = now
		} else if deadSince.IsZero() {
			deadSince, deadCode = lastGood, code
			if deadSince.IsZero() {
				deadSince = now
			}
		}
		if resp, err := client.Get("http://" + agentAddr + fakewechat.PathUserList); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// spell records a spell of holding a dead token, from start to end, that
// WeChat answered errcode for.
func (g *guardianRig) spell(start, end time.Time, errcode int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.result.spells = append(g.result.spells, end.Sub(start))
	g.result.spellOf = append(g.result.spellOf, fmt.Sprintf("%s %d %.1fs", g.simulated(start), errcode, end.Sub(start).Seconds()))
}

// agentToken is benchApp's token as the agent serves it; false when the
// agent did not answer with one.
func agentToken(client *http.Client, agentAddr string) (string, bool) {
	resp, err := client.Get("http://" + agentAddr + "/v1/credentials/" + benchApp)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var c struct{ Value string }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&c) != nil || c.Value == "" {
		return "", false
	}
	return c.Value, true
}

// runNATS is the child role "nats": a NATS server with JetStream on
// listen, storing in store, that prints READY once it accepts clients and
// runs until SIGTERM or SIGINT.
func runNATS(listen, store string) {
	opts, err := embedded.Options(listen, store)
	if err != nil {
		fatalf("nats role: %v", err)
	}
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		fatalf("nats role: %v", err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	fmt.Println("READY")
	<-stop
	srv.Shutdown()
	srv.WaitForShutdown()
}

// guardianRows prints part guardian's benchmark lines and returns its
// table rows.
func guardianDayRows(r guardianResult) []row {
	d, b := r.day, r.baseline
	delays := summarize(d.delays)
	sim := func(real time.Duration) string {
		return fmt.Sprintf("%.1f s (%s simulated)", real.Seconds(), (time.Duration(float64(real) / float64(r.scale.hour) * float64(time.Hour))).Round(time.Second))
	}
	benchLine("GuardianDay/poller", 1, d.fetches, "foreign-fetches", d.reported, "reported", fmt.Sprintf("%.3f", delays.max.Seconds()), "max-report-s",
		d.elsewhere, "invalidated-elsewhere", len(d.falseReports), "false-reports", fmt.Sprintf("%.3f", d.longestSpell().Seconds()), "max-dead-s", len(d.spells), "dead-spells")
	benchLine("GuardianDay/baseline", 1, b.fetches, "foreign-fetches", b.elsewhere, "invalidated-elsewhere", len(b.falseReports), "false-reports",
		fmt.Sprintf("%.3f", b.longestSpell().Seconds()), "max-dead-s", len(b.spells), "dead-spells")
	fmt.Printf("# guardian: 1 simulated hour = %s; token lifetime %s, overlap %s, --refresh-before %s, --quota-every %s, --min-force-interval %s, --lease-ttl %s, --upstream-timeout %s, service every %s\n",
		r.scale.hour, r.scale.expiresIn, r.scale.overlap, r.scale.refreshBefore, r.scale.quotaEvery, r.scale.minForce, guardianLeaseTTL, guardianUpstreamTimeout, r.scale.serviceEvery)
	fmt.Printf("# guardian: day of %dh in %s with %d failovers and %d NATS restarts; baseline %dh in %s; service reads %d (%d unanswered) and %d (%d)\n",
		d.hours, d.took.Round(time.Second), d.failovers, d.natsRestarts, b.hours, b.took.Round(time.Second), d.samples, d.unreadable, b.samples, b.unreadable)
	fmt.Printf("# guardian: reports (foreign fetch at, delay): %s\n", strings.Join(d.delayOf, ", "))
	fmt.Printf("# guardian: dead spells (began at, errcode, length): day %s; baseline %s\n", strings.Join(d.spellOf, ", "), strings.Join(b.spellOf, ", "))
	for _, f := range append(d.falseReports, b.falseReports...) {
		fmt.Printf("# guardian: false report: %s\n", f)
	}
	// A spell is measured in the service's reads: compared in whole reads,
	// not in the milliseconds by which two reads' timers differ.
	reads := func(d time.Duration) int64 { return int64(d.Round(r.scale.serviceEvery) / r.scale.serviceEvery) }
	what := fmt.Sprintf("%dh simulated (1 h = %s), %d failovers, %d NATS restart", d.hours, r.scale.hour, d.failovers, d.natsRestarts)
	return []row{
		{"10 guardian foreign fetches", what, fmt.Sprintf("%d made, one every 2 h; %d reported by foreign_fetch events (%d events)", d.fetches, d.reported, d.foreignEvents),
			"", "", "all reported", verdict(d.reported == d.fetches)},
		{"10 guardian report delay", "foreign fetch → its foreign_fetch event",
			fmt.Sprintf("p50 %s, max %s", sim(delays.p50), sim(delays.max)), "", "",
			fmt.Sprintf("≤ one --quota-every (%s)", r.scale.quotaEvery), verdict(delays.n > 0 && delays.max <= r.scale.quotaEvery)},
		{"10 guardian invalidated_elsewhere", "events (a service met a token another party killed)",
			fmt.Sprintf("%d", d.elsewhere), fmt.Sprintf("--quota-every 0, %dh: %d of %d foreign fetches", b.hours, b.elsewhere, b.fetches), "", "measured", ""},
		{"10 guardian false reports", "events counting more than was fetched, repeats, or in a control window",
			fmt.Sprintf("%d", len(d.falseReports)), fmt.Sprintf("%d", len(b.falseReports)), "", "0", verdict(len(d.falseReports) == 0 && len(b.falseReports) == 0)},
		{"10 guardian dead token held", fmt.Sprintf("the service's longest spell with a dead token (to one read, %s)", r.scale.serviceEvery.Round(time.Millisecond)),
			fmt.Sprintf("%s; %d spells", sim(d.longestSpell()), len(d.spells)),
			fmt.Sprintf("--quota-every 0 (the agent's 40001 only): %s; %d spells", sim(b.longestSpell()), len(b.spells)), "",
			"≤ baseline, in whole reads", verdict(reads(d.longestSpell()) <= reads(b.longestSpell()))},
	}
}
