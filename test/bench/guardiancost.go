package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// Part guardian-cost: what issue 22's guardian (the ledger of every call,
// the quota poller, the rescue) costs a refresher of many apps, against
// the same refresher before it (the binary of a git revision), in the same
// run: calls to WeChat a day and peak RSS.
//
// A real day is too long to watch, so every period is shortened by the
// same factor (scale): the fake's token lifetime, --refresh-before,
// --probe-every, --quota-every, and --upstream-rate raised by it, so that
// the calls a simulated day makes are the calls a real day would make,
// only sooner. Calls a day are then counted in a window of whole token
// lifetimes and extrapolated.

// guardianOptions are part guardian-cost's settings.
type guardianOptions struct {
	apps   int
	before string  // git revision of the baseline's binary
	scale  float64 // how much shorter every period is than the real one
	window time.Duration
	// profiles, if set, is a directory for each refresher's heap profile
	// at the end of its window (served by --pprof on --http-addr).
	profiles string
}

// guardianRun is one refresher measured.
type guardianRun struct {
	build        string // "before" or "now"
	settledRSS   int64  // VmRSS once every credential is in the bucket
	peakRSS      int64  // VmHWM at the end of the window
	window       time.Duration
	tokensPerDay float64            // token fetches a simulated day, from each app's intervals
	perDay       map[string]float64 // calls a simulated day by WeChat path, from the window's counts
	inWindow     map[string]int     // calls in the window by path
	writes       map[string]int     // bucket writes in the window: "credential" and "ledger"
}

// calls is every call a day.
func (g guardianRun) calls() float64 {
	total := 0.0
	for _, v := range g.perDay {
		total += v
	}
	return total
}

// guardianDefaults are the real periods every run scales down.
const (
	realLifetime      = 7200 * time.Second
	realRefreshBefore = 10 * time.Minute
	realProbeEvery    = time.Hour
	realQuotaEvery    = time.Hour
	realUpstreamRate  = 50.0
)

// guardianCost runs part guardian-cost: the baseline, then the working
// tree's binary, each against a NATS server and a fake WeChat of its own.
func guardianCost(o guardianOptions) []guardianRun {
	dir, err := os.MkdirTemp("", "wxtoken-bench-guardian")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("git", "cat-file", "-e", o.before+"^{commit}").CombinedOutput(); err != nil {
		log.Fatalf("guardian-cost: -guardian-before %s is not a commit of this repository (a shallow clone lacks it: fetch it, or give another): %v\n%s", o.before, err, out)
	}
	before := buildWxtoken(dir, "before", o.before)
	now := buildWxtoken(dir, "now", "")
	return []guardianRun{
		guardianMeasure(dir, "before", before, o, nil),
		guardianMeasure(dir, "now", now, o, []string{"--quota-every", scaled(realQuotaEvery, o.scale).String()}),
	}
}

func scaled(d time.Duration, scale float64) time.Duration {
	return time.Duration(float64(d) / scale)
}

// guardianMeasure runs binary with o.apps apps until every token is in the
// bucket, then counts its calls and bucket writes for o.window.
func guardianMeasure(dir, build, binary string, o guardianOptions, extra []string) guardianRun {
	opts, _ := embedded.Options("127.0.0.1:-1", filepath.Join(dir, "nats-"+build))
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	fake := fakewechat.New(fakewechat.Config{ExpiresIn: scaled(realLifetime, o.scale)})
	counter := &callCounter{fetches: map[string][]time.Time{}, paths: map[string]int{}}
	wechat := httptest.NewServer(counter.wrap(fake))
	defer wechat.Close()

	var file strings.Builder
	file.WriteString("apps:\n")
	for i := range o.apps {
		id := fmt.Sprintf("wxguard%011d", i)
		fake.AddApp(id, "secret-"+id)
		fmt.Fprintf(&file, "  - appid: %s\n    secret: secret-%s\n", id, id)
	}
	apps := filepath.Join(dir, "apps-"+build+".yaml")
	if err := os.WriteFile(apps, []byte(file.String()), 0o600); err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// Today's defaults, every period shortened by the same factor.
	args := append([]string{"serve", "--nats-url", srv.ClientURL(), "--apps", apps, "--wechat-base-url", wechat.URL,
		"--log-level", "warn",
		"--refresh-before", scaled(realRefreshBefore, o.scale).String(),
		"--probe-every", scaled(realProbeEvery, o.scale).String(),
		"--upstream-rate", strconv.FormatFloat(realUpstreamRate*o.scale, 'f', -1, 64)}, extra...)
	httpAddr := ""
	if o.profiles != "" {
		httpAddr = freePort()
		args = append(args, "--http-addr", httpAddr, "--pprof")
	}
	logFile, err := os.Create(filepath.Join(dir, "wxtoken-"+build+".log"))
	if err != nil {
		log.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	started := time.Now()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		<-exited
	}()
	died := func() {
		log.Fatalf("guardian-cost (%s): wxtoken exited; its log: %s", build, logFile.Name())
	}

	bucket := bindWhenCreated(js, exited, died)
	w, err := bucket.WatchAll(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer w.Stop()
	have := map[string]bool{}
	for len(have) < o.apps {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if _, err := kv.DecodeCredential(e.Key(), e.Value()); err == nil {
				have[e.Key()] = true
			}
			progress("guardian-cost (%s): %d of %d tokens in the bucket after %s", build, len(have), o.apps, time.Since(started).Round(time.Second))
		case <-exited:
			died()
		}
	}
	pid := cmd.Process.Pid
	run := guardianRun{build: build, settledRSS: statusKB(pid, "VmRSS:") * 1024, writes: map[string]int{}}

	// The window: every call and bucket write from here on counts.
	counter.start()
	t0 := time.Now()
	tick := time.NewTicker(time.Second) // progress only: the window is timed by its deadline
	defer tick.Stop()
	deadline := time.After(o.window)
	for waiting := true; waiting; {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if strings.HasSuffix(e.Key(), "."+kv.KindLedger) {
				run.writes["ledger"]++
			} else {
				run.writes["credential"]++
			}
		case <-exited:
			died()
		case <-tick.C:
			progress("guardian-cost (%s): window %s of %s", build, time.Since(t0).Round(time.Second), o.window)
		case <-deadline:
			waiting = false
		}
	}
	run.window = time.Since(t0)
	run.peakRSS = statusKB(pid, "VmHWM:") * 1024
	if o.profiles != "" {
		saveHeapProfile(httpAddr, filepath.Join(o.profiles, "heap-"+build+".pb.gz"))
	}
	day := scaled(24*time.Hour, o.scale)
	run.inWindow, run.perDay, run.tokensPerDay = counter.stop(run.window, day)
	return run
}

// bindWhenCreated waits for the refresher to create its bucket, or calls
// died if it exits first.
func bindWhenCreated(js jetstream.JetStream, exited <-chan struct{}, died func()) jetstream.KeyValue {
	for {
		if b, err := kv.Bind(context.Background(), js, ""); err == nil {
			return b
		}
		select {
		case <-exited:
			died()
		case <-time.After(20 * time.Millisecond): // polling: the child creates the bucket
		}
	}
}

// saveHeapProfile saves the heap profile served at addr to file.
func saveHeapProfile(addr, file string) {
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?gc=1")
	if err != nil {
		log.Fatalf("guardian-cost: heap profile: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		log.Fatalf("guardian-cost: heap profile: %s %v", resp.Status, err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		log.Fatal(err)
	}
}

// callCounter counts the calls the fake WeChat is served, by path, and
// the times of each app's token fetches.
type callCounter struct {
	mu       sync.Mutex
	counting bool
	paths    map[string]int         // calls by path since start
	fetches  map[string][]time.Time // appid → its /cgi-bin/token fetches since start
}

func (c *callCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		next.ServeHTTP(w, r)
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.counting {
			return
		}
		c.paths[r.URL.Path]++
		if r.URL.Path == "/cgi-bin/token" {
			q, _ := url.ParseQuery(r.URL.RawQuery)
			c.fetches[q.Get("appid")] = append(c.fetches[q.Get("appid")], at)
		}
	})
}

func (c *callCounter) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counting = true
}

// stop ends the count and extrapolates it to a day: token fetches from
// each app's mean interval between fetches (they come in bursts, one a
// token lifetime, which a window's count would catch a whole one of too
// many or too few), every other path from the window's count (the quota
// poller spreads its questions evenly over --quota-every).
func (c *callCounter) stop(window, day time.Duration) (inWindow map[string]int, perDay map[string]float64, tokens float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counting = false
	perDay = map[string]float64{}
	for path, n := range c.paths {
		perDay[path] = float64(n) * float64(day) / float64(window)
	}
	for _, times := range c.fetches {
		if len(times) < 2 {
			continue // the window is at least two lifetimes: none such
		}
		span := times[len(times)-1].Sub(times[0])
		tokens += float64(len(times)-1) * float64(day) / float64(span)
	}
	if len(c.fetches) > 0 {
		perDay["/cgi-bin/token"] = tokens
	}
	return c.paths, perDay, tokens
}

// guardianRows prints part guardian-cost's benchmark lines and returns its
// table rows.
func guardianRows(runs []guardianRun, o guardianOptions) []row {
	before, now := runs[0], runs[1]
	for _, r := range runs {
		benchLine(fmt.Sprintf("GuardianCost/%s/apps=%d", r.build, o.apps), 1, fmt.Sprintf("%.0f", r.calls()), "calls/day",
			fmt.Sprintf("%.0f", r.perDay["/cgi-bin/token"]), "token-fetches/day", fmt.Sprintf("%.0f", r.perDay["/cgi-bin/openapi/quota/get"]), "quota-gets/day",
			fmt.Sprintf("%.0f", r.perDay["/cgi-bin/getcallbackip"]), "callbackip-checks/day",
			r.settledRSS, "settled-rss-bytes", r.peakRSS, "peak-rss-bytes",
			r.writes["credential"], "credential-writes", r.writes["ledger"], "ledger-writes")
		fmt.Printf("# guardian-cost %s: in %s (%s simulated): %s; bucket writes %d credential, %d ledger\n", r.build,
			r.window.Round(time.Second), time.Duration(float64(r.window)*o.scale).Round(time.Minute), describePaths(r.inWindow),
			r.writes["credential"], r.writes["ledger"])
	}
	callRatio := (now.calls() - before.calls()) / before.calls()
	rssRatio := float64(now.peakRSS) / float64(before.peakRSS)
	perApp := func(r guardianRun, path string) float64 { return r.perDay[path] / float64(o.apps) }
	describe := func(r guardianRun) string {
		return fmt.Sprintf("%.0f calls a day (per app: %.1f token fetches, %.1f quota/get, %.2f getcallbackip, %.2f stable_token); peak RSS %.1f MB (settled %.1f MB)",
			r.calls(), perApp(r, "/cgi-bin/token"), perApp(r, "/cgi-bin/openapi/quota/get"), perApp(r, "/cgi-bin/getcallbackip"),
			perApp(r, "/cgi-bin/stable_token"), mb(r.peakRSS), mb(r.settledRSS))
	}
	writesPerCall := float64(now.writes["ledger"]) / float64(max(sum(now.inWindow), 1))
	what := fmt.Sprintf("10 guardian cost, %d apps", o.apps)
	setting := fmt.Sprintf("defaults, periods ÷%g (a simulated day in %s)", o.scale, scaled(24*time.Hour, o.scale).Round(time.Second))
	return []row{
		{what, setting + ": calls to WeChat a day",
			"now: " + describe(now),
			fmt.Sprintf("before (%s): %s", o.before, describe(before)),
			fmt.Sprintf("calls %+.1f%%; peak RSS %.2fx", 100*callRatio, rssRatio),
			"calls ≤ +1%, peak RSS ≤ 1.1x",
			verdict(callRatio <= 0.01 && rssRatio <= 1.1)},
		{what, "bucket writes in the window (not WeChat calls)",
			fmt.Sprintf("now: %d credential, %d ledger (%.2f ledger writes a WeChat call)", now.writes["credential"], now.writes["ledger"], writesPerCall),
			fmt.Sprintf("before: %d credential, %d ledger", before.writes["credential"], before.writes["ledger"]),
			"", "measured", ""},
	}
}

func sum(m map[string]int) int {
	total := 0
	for _, v := range m {
		total += v
	}
	return total
}

// describePaths lists calls by path, most first.
func describePaths(m map[string]int) string {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool {
		return m[paths[i]] > m[paths[j]] || m[paths[i]] == m[paths[j]] && paths[i] < paths[j]
	})
	var parts []string
	for _, p := range paths {
		parts = append(parts, fmt.Sprintf("%s %d", p, m[p]))
	}
	if len(parts) == 0 {
		return "no calls"
	}
	return strings.Join(parts, ", ")
}
