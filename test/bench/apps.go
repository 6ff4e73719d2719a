package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
)

// appsResult is the many-apps run.
type appsResult struct {
	apps         int
	credentials  int // apps, and their jsapi tickets if asked for
	rate         float64
	allTokens    time.Duration // from the refresher's start until every credential is in the bucket
	pacingFloor  time.Duration // credentials / rate
	maxPerSecond int           // most calls in any one-second window (sliding)
	maxPerBucket int           // most calls in any calendar second
	cpuPerHour   time.Duration // steady-state CPU time per hour of wall time
	cpuShare     float64       // the same, as a share of one core
	peakRSS      int64         // bytes
}

// manyApps runs the real wxtoken binary as its own process with n apps
// (each with a jsapi ticket when tickets is set), against NATS and the
// fake WeChat in this process.
func manyApps(n int, tickets bool, rate float64, steady time.Duration) appsResult {
	dir, binary, srv, cleanup := childRig("wxtoken-bench-apps")
	defer cleanup()
	fake := fakewechat.New(fakewechat.Config{})
	var (
		mu    sync.Mutex
		calls []time.Time
	)
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/token" || r.URL.Path == "/cgi-bin/ticket/getticket" {
			mu.Lock()
			calls = append(calls, time.Now())
			mu.Unlock()
		}
		fake.ServeHTTP(w, r)
	}))
	defer wechat.Close()
	var file strings.Builder
	file.WriteString("apps:\n")
	for i := range n {
		id := fmt.Sprintf("wxmany%012d", i)
		fake.AddApp(id, "secret-"+id)
		fmt.Fprintf(&file, "  - appid: %s\n    secret: secret-%s\n", id, id)
		if tickets {
			file.WriteString("    tickets: [jsapi]\n")
		}
	}
	credentials := n
	if tickets {
		credentials = 2 * n
	}
	apps := filepath.Join(dir, "apps.yaml")
	os.WriteFile(apps, []byte(file.String()), 0o600)

	// Count the apps with a token in the bucket as they arrive.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	cmd := exec.Command(binary, "serve", "--nats-url", srv.ClientURL(), "--apps", apps, "--wechat-base-url", wechat.URL,
		"--upstream-rate", strconv.FormatFloat(rate, 'f', -1, 64), "--log-level", "warn",
		// No probes: they would add a stable_token call per app to the
		// fills measured, which earlier runs did not make.
		"--probe-every", "0")
	cmd.Stderr = os.Stderr
	started := time.Now()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	var bucket jetstream.KeyValue
	for bucket == nil {
		if b, err := kv.Bind(context.Background(), js, ""); err == nil {
			bucket = b
		} else {
			time.Sleep(20 * time.Millisecond) // waiting for the child to create it
		}
	}
	have := map[string]bool{}
	w, err := bucket.WatchAll(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for e := range w.Updates() {
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			continue
		}
		if _, err := kv.DecodeCredential(e.Key(), e.Value()); err == nil {
			have[e.Key()] = true
		}
		if len(have)%200 == 0 {
			progress("apps: %d of %d credentials in the bucket after %s", len(have), credentials, time.Since(started).Round(time.Second))
		}
		if len(have) == credentials {
			break
		}
	}
	allTokens := time.Since(started)
	w.Stop()

	// Steady state: nothing to fetch for two hours; what does waiting cost?
	cpu0 := processCPU(cmd.Process.Pid)
	t0 := time.Now()
	for elapsed := time.Duration(0); elapsed < steady; elapsed = time.Since(t0) {
		progress("apps: steady state, %s of %s", elapsed.Round(time.Second), steady)
		time.Sleep(time.Second) // the measurement window
	}
	cpu := processCPU(cmd.Process.Pid) - cpu0
	window := time.Since(t0)

	mu.Lock()
	defer mu.Unlock()
	return appsResult{
		apps: n, credentials: credentials, rate: rate, allTokens: allTokens,
		pacingFloor:  time.Duration(float64(credentials) / rate * float64(time.Second)),
		maxPerSecond: maxInWindow(calls, time.Second), maxPerBucket: maxPerCalendarSecond(calls),
		cpuPerHour: time.Duration(float64(cpu) * float64(time.Hour) / float64(window)),
		cpuShare:   float64(cpu) / float64(window), peakRSS: peakRSS(cmd.Process.Pid),
	}
}

// childRig makes a temporary directory, builds the wxtoken binary into it
// and starts an embedded NATS server that stores there, for a part that
// runs the refresher as its own process. cleanup stops and removes it all.
func childRig(name string) (dir, binary string, srv *server.Server, cleanup func()) {
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		log.Fatal(err)
	}
	binary = filepath.Join(dir, "wxtoken")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/wxtoken/wxtoken/cmd/wxtoken").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		log.Fatalf("go build of cmd/wxtoken (run the benchmark from the repository root): %v\n%s", err, out)
	}
	opts, _ := embedded.Options("127.0.0.1:-1", filepath.Join(dir, "nats"))
	srv, err = embedded.Start(opts, nil)
	if err != nil {
		os.RemoveAll(dir)
		log.Fatal(err)
	}
	return dir, binary, srv, func() {
		srv.Shutdown()
		os.RemoveAll(dir)
	}
}

// maxInWindow is the most events in any window of length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	t := slices.Clone(times)
	slices.SortFunc(t, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range t {
		for t[i].Sub(t[j]) >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

func maxPerCalendarSecond(times []time.Time) int {
	counts := map[int64]int{}
	best := 0
	for _, t := range times {
		counts[t.Unix()]++
		best = max(best, counts[t.Unix()])
	}
	return best
}

// processCPU is the user and system CPU time pid has used.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		log.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// peakRSS is the high-water mark of pid's resident memory.
func peakRSS(pid int) int64 { return statusKB(pid, "VmHWM:") * 1024 }

func statusKB(pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}
