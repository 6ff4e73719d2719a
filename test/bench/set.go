package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/benchkit"
)

// setKeys are the keys the set parts follow: a platform's authorizers.
func setKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = benchkit.SetKey(i)
	}
	return keys
}

// filledNATS starts an embedded NATS server in dir whose token bucket holds
// a valid token under each of keys, as a refresher would have left it.
func filledNATS(dir string, keys []string) *server.Server {
	opts, err := embedded.Options("127.0.0.1:-1", dir)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	progress("filling the bucket with %d keys", len(keys))
	if err := benchkit.Fill(ctx, js, keys); err != nil {
		log.Fatal(err)
	}
	return srv
}

// followed is what a process following keys holds: sampled before and
// after it follows them, and how long until every key was held.
type followed struct {
	Mode        string        `json:"mode"` // "set" or "subscribers"
	Keys        int           `json:"keys"`
	Ready       time.Duration `json:"ready"`
	RSSBefore   int64         `json:"rss_before"`
	RSSAfter    int64         `json:"rss_after"`
	HeapBefore  uint64        `json:"heap_before"`
	HeapAfter   uint64        `json:"heap_after"`
	Goroutines0 int           `json:"goroutines_before"`
	Goroutines1 int           `json:"goroutines_after"`
}

func (f followed) rssAdded() int64  { return f.RSSAfter - f.RSSBefore }
func (f followed) heapAdded() int64 { return int64(f.HeapAfter) - int64(f.HeapBefore) }
func (f followed) goroutinesAdded() int {
	return f.Goroutines1 - f.Goroutines0
}

// runFollow is the child role "follow": connected to NATS, it samples
// itself, follows keys keys with one Set (mode "set") or a Subscriber each
// (mode "subscribers", 64 started at a time), samples itself again, prints
// the samples and exits.
func runFollow(url, mode string, n int) {
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	// nats.go starts a goroutine of the connection's own at its first
	// request: made now, it is not counted as the follower's.
	nc.Request("bench.nobody", nil, 100*time.Millisecond)
	f := followed{Mode: mode, Keys: n}
	sample := func(rss *int64, heap *uint64, goroutines *int) {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		*rss, *heap, *goroutines = statusKB(os.Getpid(), "VmRSS:")*1024, ms.HeapAlloc, runtime.NumGoroutine()
	}
	sample(&f.RSSBefore, &f.HeapBefore, &f.Goroutines0)
	keys := setKeys(n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var keep []any // what follows the keys, kept alive until sampled
	switch mode {
	case "set":
		set, err := subscriber.NewSet(ctx, nc)
		if err != nil {
			log.Fatal(err)
		}
		f.Ready = time.Since(start)
		if held := len(set.Keys()); held != n {
			log.Fatalf("the set holds %d keys, want %d", held, n)
		}
		keep = append(keep, set)
	case "subscribers":
		subs := make([]*subscriber.Subscriber, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i, key := range keys {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				sub, err := subscriber.New(ctx, nc, key)
				if err != nil {
					log.Fatal(err)
				}
				subs[i] = sub
			})
		}
		wg.Wait()
		f.Ready = time.Since(start)
		keep = append(keep, subs)
	default:
		log.Fatalf("follow: unknown mode %q", mode)
	}
	sample(&f.RSSAfter, &f.HeapAfter, &f.Goroutines1)
	runtime.KeepAlive(keep)
	json.NewEncoder(os.Stdout).Encode(f)
}

// followFootprint measures a process following keys keys with one Set,
// then another following them with a Subscriber each, against a bucket
// that holds them all: memory, goroutines and the time until every key is
// held. Each runs in a child process of its own.
func followFootprint(keys int) (set, subscribers followed) {
	dir, _ := os.MkdirTemp("", "wxtoken-bench-set")
	defer os.RemoveAll(dir)
	srv := filledNATS(dir, setKeys(keys))
	defer srv.Shutdown()
	self, _ := os.Executable()
	run := func(mode string) followed {
		progress("follow: %d keys with %s", keys, mode)
		cmd := exec.Command(self, "-role", "follow", "-nats", srv.ClientURL(), "-mode", mode, "-keys", strconv.Itoa(keys))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			log.Fatalf("follow child (%s): %v", mode, err)
		}
		var f followed
		if err := json.Unmarshal(out, &f); err != nil {
			log.Fatalf("follow child (%s): %q", mode, out)
		}
		return f
	}
	return run("set"), run("subscribers")
}

// agentRun is one wxtoken agent following keys: how long until /readyz
// said 200, and its memory then.
type agentRun struct {
	build string // "before" or "after"
	keys  int
	ready time.Duration
	rss   int64 // VmRSS once ready
	peak  int64 // VmHWM once ready
}

// agentKeys runs `wxtoken agent` over a bucket of keys keys, serving every
// key, and with --keys naming one of them, for the binary built from the
// working tree and, if before names a git revision, for one built from it:
// the start time and the memory per key, before and after.
func agentKeys(keys int, before string) []agentRun {
	dir, _ := os.MkdirTemp("", "wxtoken-bench-agentkeys")
	defer os.RemoveAll(dir)
	builds := map[string]string{"after": buildWxtoken(dir, "after", "")}
	if before != "" {
		builds["before"] = buildWxtoken(dir, "before", before)
	}
	srv := filledNATS(filepath.Join(dir, "nats"), setKeys(keys))
	defer srv.Shutdown()
	var runs []agentRun
	for _, build := range []string{"before", "after"} {
		binary, ok := builds[build]
		if !ok {
			continue
		}
		for _, n := range []int{1, keys} {
			progress("agent (%s): %d keys", build, n)
			runs = append(runs, runAgentOver(binary, dir, srv.ClientURL(), build, n))
		}
	}
	return runs
}

// buildWxtoken builds cmd/wxtoken into dir: from the working tree, or from
// the git revision rev (its tree exported to dir, built with the same
// module cache).
func buildWxtoken(dir, name, rev string) string {
	binary := filepath.Join(dir, "wxtoken-"+name)
	src := "."
	if rev != "" {
		progress("agent: exporting %s", rev)
		src = filepath.Join(dir, "src-"+name)
		os.MkdirAll(src, 0o755)
		archive := exec.Command("sh", "-c", "git archive "+rev+" | tar -x -C "+src)
		if out, err := archive.CombinedOutput(); err != nil {
			log.Fatalf("git archive %s (run the benchmark from the repository root): %v\n%s", rev, err, out)
		}
	}
	progress("agent: building cmd/wxtoken (%s)", name)
	build := exec.Command("go", "build", "-o", binary, "./cmd/wxtoken")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		log.Fatalf("go build of cmd/wxtoken (%s): %v\n%s", name, err, out)
	}
	return binary
}

// runAgentOver starts the agent serving every key of the bucket (n > 1)
// or --keys of one, waits for /readyz to say 200, samples its memory and
// stops it.
func runAgentOver(binary, dir, natsURL, build string, n int) agentRun {
	addr := freePort()
	args := []string{"agent", "--nats-url", natsURL, "--listen", addr, "--wechat-base-url", "http://127.0.0.1:1", "--log-level", "warn"}
	if n == 1 {
		args = append(args, "--keys", benchkit.SetKey(0))
	}
	start := time.Now()
	p := startLogged(dir, "agent-"+build, append([]string{binary}, args...)...)
	defer p.stop()
	client := &http.Client{Timeout: 5 * time.Second}
	for deadline := start.Add(5 * time.Minute); ; time.Sleep(10 * time.Millisecond) { // polling /readyz, as a load balancer does
		if p.exited() {
			p.died("wxtoken agent (" + build + ")")
		}
		if time.Now().After(deadline) {
			p.died("wxtoken agent (" + build + ", not ready in 5 minutes)")
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
	}
	ready := time.Since(start)
	pid := p.cmd.Process.Pid
	return agentRun{build: build, keys: n, ready: ready, rss: statusKB(pid, "VmRSS:") * 1024, peak: statusKB(pid, "VmHWM:") * 1024}
}

// perKey is the memory per key of the runs of build: the difference
// between its run over every key and its run over one.
func perKey(runs []agentRun, build string) (one, all agentRun, bytes int64, ok bool) {
	for _, r := range runs {
		if r.build != build {
			continue
		}
		if r.keys == 1 {
			one = r
		} else {
			all = r
		}
	}
	if one.keys == 0 || all.keys == 0 {
		return one, all, 0, false
	}
	return one, all, (all.rss - one.rss) / int64(all.keys-1), true
}

// describeAgent says what a build of the agent did.
func describeAgent(one, all agentRun, bytes int64) string {
	return fmt.Sprintf("%d keys: ready in %.2f s, RSS %.1f MB (peak %.1f MB); 1 key: ready in %.2f s, RSS %.1f MB; %s per key",
		all.keys, all.ready.Seconds(), mb(all.rss), mb(all.peak), one.ready.Seconds(), mb(one.rss), bytesText(bytes))
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// bytesText writes a size in bytes, or KB above ten thousand of them.
func bytesText(b int64) string {
	if b >= 10000 {
		return fmt.Sprintf("%.1f KB", float64(b)/1024)
	}
	return fmt.Sprintf("%d bytes", b)
}

// gitRevision is the commit the working tree is at, and whether it has
// changes, for the record.
func gitRevision() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
