package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// The platform of the authorizers part.
const (
	benchComponent       = "wx00000000000bc001"
	benchComponentSecret = "bench-component-secret"
	benchMessageToken    = "bench-message-token"
	benchAESKey          = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG" // 43 characters
)

// restartWindow is how long the restarted refresher is watched after it
// is ready, at least: the measurement window for its calls to WeChat.
const restartWindow = 10 * time.Second

// authorizersResult is the many-authorizers run: one third-party platform
// whose authorizers were imported before the refresher first ran, and the
// same refresher started again.
type authorizersResult struct {
	authorizers  int
	rate         float64
	allTokens    time.Duration // from the refresher's start until the component's and every authorizer's token is in the bucket
	pacingFloor  time.Duration // (authorizers + 1) / rate
	maxPerSecond int           // most token calls in any one-second window (sliding)
	maxPerBucket int           // most token calls in any calendar second
	firstCalls   map[string]int
	peakRSS      int64   // bytes, of the first process
	steadyCPU    float64 // the first process's CPU seconds a second over window, once it held every token

	restartCalls   map[string]int // calls to WeChat from the first process's exit on, by path
	restartReady   time.Duration  // from the second process's start until /readyz answered 200
	restartWatched time.Duration  // from its start until the calls were counted
	restartPeakRSS int64
	tokens         int // tokens in the bucket after the restart
	invalid        int // of those, the ones WeChat no longer takes
	staleRefresh   int // authorizers whose refresh token in the platform bucket WeChat no longer takes
}

func (a authorizersResult) restartTotal() int {
	total := 0
	for _, n := range a.restartCalls {
		total += n
	}
	return total
}

// rssTarget is the refresher's peak RSS allowed: 200 MB up to 10,000
// authorizers (issue 16), 500 MB beyond, up to 100,000 (issue 21).
func (a authorizersResult) rssTarget() int64 {
	if a.authorizers <= 10000 {
		return 200 << 20
	}
	return 500 << 20
}

// tokenPaths are the calls that fetch a token: what the pacer paces.
var tokenPaths = []string{fakewechat.PathComponentToken, fakewechat.PathAuthorizerTok}

// authorizersOptions are the authorizers part's flags.
type authorizersOptions struct {
	authorizers int
	rate        float64
	// profileDir: the first process serves --pprof, and its CPU profile
	// while filling the bucket, its heap once full and its CPU profile in
	// steady state are written there.
	profileDir string
	// memLimit, if not empty, is the refresher processes' GOMEMLIMIT.
	memLimit string
	// steady is how long the refresher's CPU is measured once it holds
	// every token: past --schedule's 30 s, it takes in at least one
	// refresh check of every credential.
	steady time.Duration
}

// manyAuthorizers runs the real wxtoken binary as its own process with a
// platform of n authorizers, against NATS and the fake WeChat in this
// process; then stops it and starts it again.
func manyAuthorizers(o authorizersOptions) authorizersResult {
	n, rate, profileDir := o.authorizers, o.rate, o.profileDir
	dir, binary, srv, cleanup := childRig("wxtoken-bench-authorizers")
	defer cleanup()
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(benchComponent, benchComponentSecret, benchMessageToken, benchAESKey); err != nil {
		log.Fatal(err)
	}
	var (
		mu    sync.Mutex
		calls = map[string][]time.Time{} // every call to WeChat, by path
	)
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.URL.Path] = append(calls[r.URL.Path], time.Now())
		mu.Unlock()
		fake.ServeHTTP(w, r)
	}))
	defer wechat.Close()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	// The accounts authorized the platform before wxtoken ran: their
	// refresh tokens come from another system's store. The bucket is made
	// as the refresher makes it, so that its CreateOrUpdate changes
	// nothing.
	platformBucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16,
		Storage: jetstream.FileStorage, Description: "wxtoken: third-party platforms' verify tickets and authorizers' refresh tokens (refresher only)"})
	if err != nil {
		log.Fatal(err)
	}
	keys := make([]string, 0, n+1)
	for i := range n {
		id := fmt.Sprintf("wxauth%012d", i)
		refresh, err := fake.GrantRefreshToken(benchComponent, id)
		if err != nil {
			log.Fatal(err)
		}
		if _, _, _, err := kv.UpdateAuthorizer(ctx, platformBucket, benchComponent, id, func(kv.Authorizer, bool) (kv.Authorizer, bool) {
			return kv.Authorizer{RefreshToken: refresh, IssuedAt: time.Now()}, true
		}); err != nil {
			log.Fatal(err)
		}
		keys = append(keys, id)
		progress("authorizers: %d of %d imported", i+1, n)
	}
	keys = append(keys, benchComponent)
	apps := filepath.Join(dir, "apps.yaml")
	os.WriteFile(apps, fmt.Appendf(nil, "platforms:\n  - component_appid: %s\n    secret: %s\n    message_token: %s\n    encoding_aes_key: %s\n",
		benchComponent, benchComponentSecret, benchMessageToken, benchAESKey), 0o600)

	callback := freePort()
	args := []string{"serve", "--nats-url", srv.ClientURL(), "--apps", apps, "--wechat-base-url", wechat.URL,
		"--upstream-rate", strconv.FormatFloat(rate, 'f', -1, 64), "--callback-addr", callback, "--log-level", "warn",
		"--probe-every", "0"} // no probes, as in the apps part
	floor := time.Duration(float64(n+1) / rate * float64(time.Second))

	firstArgs := args
	firstOps := freePort()
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			log.Fatal(err)
		}
		firstArgs = append(slices.Clone(args), "--http-addr", firstOps, "--pprof")
	}
	started := time.Now()
	var env []string
	if o.memLimit != "" {
		env = []string{"GOMEMLIMIT=" + o.memLimit}
	}
	first := startChild(binary, env, firstArgs...)
	defer first.stop()
	pushTicket(fake, "http://"+callback+"/wechat/platform/events", first)
	var fillProfile sync.WaitGroup
	if profileDir != "" {
		// The middle of the fill: the pacer at full rate.
		seconds := max(5, min(60, int(floor.Seconds()/2)))
		fillProfile.Go(func() {
			saveProfile(firstOps, fmt.Sprintf("profile?seconds=%d", seconds), filepath.Join(profileDir, "fill.cpu"))
		})
	}
	allTokens := awaitTokens(js, keys, started, first, 2*floor+time.Minute)
	fillProfile.Wait()
	if profileDir != "" {
		saveProfile(firstOps, "heap", filepath.Join(profileDir, "full.heap"))
	}
	steadyCPU := steadyCPU(first, o.steady, firstOps, profileDir)
	peak := peakRSS(first.cmd.Process.Pid)
	first.stop()
	stopped := time.Now()

	// The restart: every token is valid, and the refresh tokens are in
	// the platform bucket; there is nothing to fetch.
	opsAddr := freePort()
	restarted := time.Now()
	second := startChild(binary, env, append(args, "--http-addr", opsAddr)...)
	defer second.stop()
	awaitReady(second, opsAddr)
	ready := time.Since(restarted)
	for elapsed := time.Duration(0); elapsed < restartWindow; elapsed = time.Since(restarted) - ready {
		progress("authorizers: restarted, watching the calls to WeChat, %s of %s", elapsed.Round(time.Second), restartWindow)
		time.Sleep(100 * time.Millisecond) // the measurement window
	}
	// Then until the process has logged nothing for a second.
	for quiet := time.Now().Add(30 * time.Second); second.log.sinceLast() < time.Second && time.Now().Before(quiet); {
		time.Sleep(100 * time.Millisecond) // the measurement window
	}
	watched := time.Since(restarted)
	restartPeak := peakRSS(second.cmd.Process.Pid)

	invalid, stale := checkTokens(js, platformBucket, fake, keys)
	second.stop()

	mu.Lock()
	defer mu.Unlock()
	var tokenCalls []time.Time
	firstCalls, restartCalls := map[string]int{}, map[string]int{}
	for path, times := range calls {
		for _, t := range times {
			if t.Before(stopped) {
				firstCalls[path]++
				if slices.Contains(tokenPaths, path) {
					tokenCalls = append(tokenCalls, t)
				}
			} else {
				restartCalls[path]++
			}
		}
	}
	return authorizersResult{
		authorizers: n, rate: rate, allTokens: allTokens, pacingFloor: floor,
		maxPerSecond: maxInWindow(tokenCalls, time.Second), maxPerBucket: maxPerCalendarSecond(tokenCalls),
		firstCalls: firstCalls, peakRSS: peak, steadyCPU: steadyCPU,
		restartCalls: restartCalls, restartReady: ready, restartWatched: watched, restartPeakRSS: restartPeak,
		tokens: len(keys), invalid: invalid, staleRefresh: stale,
	}
}

// steadyCPU is the CPU the refresher uses, in seconds a second, over
// window while it holds every token and has nothing to fetch: the
// refresh checks and the lease. With profileDir, a CPU profile of the
// same window is written there.
func steadyCPU(c *child, window time.Duration, opsAddr, profileDir string) float64 {
	from, at := processCPU(c.cmd.Process.Pid), time.Now()
	if profileDir != "" {
		saveProfile(opsAddr, fmt.Sprintf("profile?seconds=%d", int(window.Seconds())), filepath.Join(profileDir, "steady.cpu"))
	}
	for time.Since(at) < window {
		progress("authorizers: every token held, measuring CPU, %s of %s", time.Since(at).Round(time.Second), window)
		select {
		case <-c.done:
			c.exited("its steady CPU was measured")
		case <-time.After(100 * time.Millisecond): // the measurement window
		}
	}
	return (processCPU(c.cmd.Process.Pid) - from).Seconds() / time.Since(at).Seconds()
}

// saveProfile writes the refresher's /debug/pprof/<what> to path.
func saveProfile(opsAddr, what, path string) {
	resp, err := http.Get("http://" + opsAddr + "/debug/pprof/" + what)
	if err != nil {
		log.Fatalf("authorizers: profile %s: %v", what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		log.Fatalf("authorizers: profile %s: %s %v", what, resp.Status, err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		log.Fatal(err)
	}
}

// child is a wxtoken process of the benchmark.
type child struct {
	cmd  *exec.Cmd
	log  *childLog
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done is closed
}

// startChild starts binary with args, in this process's environment plus
// env.
func startChild(binary string, env []string, args ...string) *child {
	c := &child{cmd: exec.Command(binary, args...), log: &childLog{}, done: make(chan struct{})}
	if len(env) > 0 {
		c.cmd.Env = append(os.Environ(), env...)
	}
	c.cmd.Stderr = c.log
	// Should the benchmark die, so does the refresher: it would retry
	// its vanished NATS server for ever.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		log.Fatal(err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c
}

// stop sends SIGINT, as Ctrl-C would, and waits for the process to exit.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(os.Interrupt)
	<-c.done
}

// exited fails the benchmark for a refresher that ended before its time.
func (c *child) exited(what string) {
	log.Fatalf("authorizers: wxtoken serve exited while %s: %v", what, c.err)
}

// childLog passes a child's log through to stderr, noting when it last
// wrote.
type childLog struct {
	mu   sync.Mutex
	last time.Time
}

func (l *childLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.last = time.Now()
	l.mu.Unlock()
	return os.Stderr.Write(p)
}

func (l *childLog) sinceLast() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Since(l.last)
}

// pushTicket pushes the platform's verify ticket until the refresher takes
// it: until the callback listens and the platform bucket is open, it
// cannot.
func pushTicket(fake *fakewechat.Server, url string, c *child) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, answer, err := fake.PushTicket(ctx, url, benchComponent)
		if err == nil && answer == "success" {
			return
		}
		select {
		case <-c.done:
			c.exited("the verify ticket was pushed")
		case <-ctx.Done():
			log.Fatalf("authorizers: the refresher took no verify ticket in 30 s: %q, %v", answer, err)
		case <-time.After(50 * time.Millisecond): // the child is starting
		}
	}
}

// awaitTokens waits until each of keys has a token in the bucket, and
// returns the time since started.
func awaitTokens(js jetstream.JetStream, keys []string, started time.Time, c *child, limit time.Duration) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var bucket jetstream.KeyValue
	for bucket == nil {
		if b, err := kv.Bind(ctx, js, ""); err == nil {
			bucket = b
			continue
		}
		select {
		case <-c.done:
			c.exited("the token bucket was awaited")
		case <-ctx.Done():
			log.Fatalf("authorizers: no token bucket after %s", limit)
		case <-time.After(20 * time.Millisecond): // waiting for the child to create it
		}
	}
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	w, err := bucket.WatchAll(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Stop()
	have := map[string]bool{}
	for len(have) < len(want) {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				log.Fatal("authorizers: the token bucket watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut || !want[e.Key()] {
				continue
			}
			if _, err := kv.DecodeCredential(e.Key(), e.Value()); err == nil {
				have[e.Key()] = true
			}
			progress("authorizers: %d of %d tokens in the bucket after %s", len(have), len(want), time.Since(started).Round(time.Second))
		case <-c.done:
			c.exited("the tokens were awaited")
		case <-ctx.Done():
			log.Fatalf("authorizers: %d of %d tokens in the bucket after %s", len(have), len(want), limit)
		}
	}
	return time.Since(started)
}

// awaitReady waits until the refresher's /readyz answers 200.
func awaitReady(c *child, addr string) {
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if resp, err := client.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-c.done:
			c.exited("its /readyz was awaited")
		case <-time.After(20 * time.Millisecond): // the child is starting
		}
	}
	log.Fatal("authorizers: the restarted refresher was not ready in a minute")
}

// checkTokens reads each key's token from the bucket and asks WeChat
// whether it works, and each authorizer's refresh token from the platform
// bucket likewise.
func checkTokens(js jetstream.JetStream, platformBucket jetstream.KeyValue, fake *fakewechat.Server, keys []string) (invalid, staleRefresh int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bucket, err := kv.Bind(ctx, js, "")
	if err != nil {
		log.Fatal(err)
	}
	for i, key := range keys {
		progress("authorizers: checking token %d of %d", i+1, len(keys))
		e, err := bucket.Get(ctx, key)
		if err != nil {
			invalid++
			continue
		}
		c, err := kv.DecodeCredential(key, e.Value())
		if ok, _ := fake.Valid(c.Value); err != nil || !ok {
			invalid++
			continue
		}
		if key == benchComponent {
			continue
		}
		rec, err := platformBucket.Get(ctx, kv.AuthorizerKey(benchComponent, key))
		if err != nil {
			staleRefresh++
			continue
		}
		a, err := kv.DecodeAuthorizer(rec.Key(), rec.Value())
		if err != nil || !fake.RefreshTokenWorks(benchComponent, key, a.RefreshToken) {
			staleRefresh++
		}
	}
	return invalid, staleRefresh
}

// describeCalls lists calls by path, "none" for none.
func describeCalls(calls map[string]int) string {
	var parts []string
	for _, path := range slices.Sorted(maps.Keys(calls)) {
		parts = append(parts, fmt.Sprintf("%d %s", calls[path], strings.TrimPrefix(path, "/cgi-bin/")))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
