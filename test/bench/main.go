// Command bench measures wxtoken against the physical floor and against
// what users would do instead; each part compares with a baseline taken in
// the same run. Results print as benchmark lines (benchstat reads them) and
// as a final table. See BENCHMARKS.md.
//
// Part guardian (guardian.go) is issue 22's day of a foreign fetcher: the
// real binary's replicas, agent and a NATS process on a day scaled to
// -guardian-hour of real time an hour, against a day with --quota-every 0.
//
//	go run ./test/bench                          # every part (about 35 minutes: guardian-cost 17 of them, guardian 5.5)
//	go run ./test/bench -part propagation -n 1000
//	go run ./test/bench -part agent              # wxtoken agent against redis and nginx
//	go run ./test/bench -part login              # a login call through the agent against one made directly
//	go run ./test/bench -part authorizers -authorizers 10000 -rate 50   # a platform's authorizers, then a restart
//	go run ./test/bench -part regions -region-n 100 -partition 60s      # two regions behind 30 ms links, then a partition
//	go run ./test/bench -part sets,follow,agentkeys -agent-before main   # 10,000 keys on one Set
//	go run ./test/bench -part guardian-cost -guardian-scale 30   # 10,000 apps before the ledger (28241fe) and now
//	go run ./test/bench -part guardian           # a foreign fetcher's simulated day: 3 replicas, an agent, NATS, as processes
//	go run ./test/bench -smoke                   # every part, tiny, as in CI
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/wxtoken/wxtoken/test/benchkit"
)

var stderr = os.Stderr

func main() {
	role := flag.String("role", "", "internal: run as a child process of the benchmark")
	expires := flag.Duration("expires", 2*time.Hour, "internal: token lifetime of the system role")
	minForce := flag.Duration("min-force", time.Nanosecond, "internal: min force interval of the system role")
	natsURL := flag.String("nats", "", "internal: NATS URL of the footprint and follow roles; listen address of the nats role")
	store := flag.String("store", "", "internal: JetStream store directory of the nats role")
	systemApps := flag.Int("system-apps", 1, "internal: apps of the system role")
	followMode := flag.String("mode", "", "internal: set or subscribers, for the follow role")
	counts := flag.String("counts", "1,100", "footprint: app counts to follow, ascending")
	part := flag.String("part", "all", "parts to run, comma-separated: read, propagation, sets, storm, quota, apps, footprint, follow, agent, login, agentkeys, authorizers, regions, guardian-cost, guardian, or all")
	n := flag.String("n", "100,1000", "propagation: subscriber counts, comma-separated")
	rotations := flag.Int("rotations", 100, "propagation: least rotations per subscriber count (small counts get more, for at least 20,000 samples); a round's samples rise and fall together, so a p99 of few rounds is their slowest one")
	sets := flag.Int("sets", 100, "sets: processes, each following every key with a Set")
	setRotations := flag.Int("set-rotations", 200, "sets: rotations of keys picked at random")
	keys := flag.Int("keys", 10000, "sets, follow, agentkeys: keys in the bucket")
	agentBefore := flag.String("agent-before", "", "agentkeys: a git revision whose agent to measure beside the working tree's (the agent before the Set)")
	stormN := flag.Int("storm", 1000, "storm: subscribers reporting the same stale token")
	speed := flag.Float64("speed", 10000, "quota: how much faster than real time the simulated day runs")
	apps := flag.Int("apps", 10000, "apps, guardian-cost: apps in one refresher")
	guardianBefore := flag.String("guardian-before", "28241fe", "guardian-cost: the git revision whose refresher is the baseline (main before the ledger)")
	guardianScale := flag.Float64("guardian-scale", 60, "guardian-cost: how many times shorter every period is (token lifetime, --refresh-before, --probe-every, --quota-every) and --upstream-rate higher")
	guardianProfiles := flag.String("guardian-profiles", "", "guardian-cost: save each refresher's heap profile at the end of its window to `directory`")
	guardianWindow := flag.Duration("guardian-window", 0, "guardian-cost: the window calls are counted in (default: two token lifetimes, scaled)")
	tickets := flag.Bool("tickets", false, "apps: give each app a jsapi ticket too (two credentials per app)")
	rate := flag.Float64("rate", 50, "apps, authorizers: --upstream-rate of the refresher")
	authorizers := flag.Int("authorizers", 10000, "authorizers: authorizers of one third-party platform in one refresher")
	steady := flag.Duration("steady", time.Minute, "apps, authorizers: steady-state window for CPU")
	reads := flag.Int("reads", 10000, "agent: fresh-connection reads per server per round")
	freshClients := flag.Int("clients", 1, "agent: clients making the fresh-connection reads at once, like PHP-FPM workers")
	agentRounds := flag.Int("rounds", 5, "agent: rounds of the fresh-connection reads and of wrk, alternating between servers")
	wrkArgs := flag.String("wrk", "-t2 -c32 -d5s", "agent: wrk's settings, the same for each server")
	calls := flag.Int("calls", 10000, "agent: calls through the agent, and as many direct and through a bare Go proxy; login: exchanges each way")
	requireTools := flag.Bool("require-tools", false, "agent: fail when redis-server, nginx or wrk is missing instead of skipping")
	bareBody := flag.String("body", "", "internal: the JSON file the bare role serves")
	bareUpstream := flag.String("upstream", "", "internal: the URL the bare role proxies to")
	regionN := flag.Int("region-n", 100, "regions: subscribers at the hub and in each of the two regions")
	regionRotations := flag.Int("region-rotations", 200, "regions: rotations measured (a p99 of fewer is their one or two slowest)")
	delay := flag.String("delay", "30ms,45ms", "regions: the delay of each region's link to the hub, each way, in the order "+strings.Join(benchRegions, ",")+" (one value: every region's)")
	partition := flag.Duration("partition", time.Minute, "regions: how long the regions are cut off")
	guardianHour := flag.Duration("guardian-hour", 10*time.Second, "guardian: real length of one simulated hour (every duration of WeChat's and wxtoken's scales with it)")
	guardianHours := flag.Int("guardian-hours", 24, "guardian: simulated hours of the day with the foreign fetcher, the failovers and the NATS restart (even, at least 12)")
	guardianBaseline := flag.Int("guardian-baseline-hours", 6, "guardian: simulated hours of the baseline day (--quota-every 0, no failover)")
	smoke := flag.Bool("smoke", false, "run every part at a tiny size, to check that the program works")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process to `file`")
	memLimit := flag.String("refresher-gomemlimit", "", "authorizers: the refresher's GOMEMLIMIT, such as 400MiB (default: none, Go's default)")
	profileDir := flag.String("profiles", "", "authorizers: write the refresher's CPU profiles (filling the bucket, steady) and heap (bucket full) to `directory`")
	flag.Parse()
	log.SetFlags(0)

	switch *role {
	case "system":
		runSystem(*expires, *minForce, *systemApps)
		return
	case "follow":
		runFollow(*natsURL, *followMode, *keys)
		return
	case "setfollower":
		runSetFollower(*natsURL, *keys)
		return
	case "footprint":
		runFootprint(*natsURL, ints(*counts))
		return
	case "bare":
		runBare(*bareBody, *bareUpstream)
		return
	case "regions":
		runRegionsSystem(regionDelays(*delay))
		return
	case "nats":
		runNATS(*natsURL, *store)
		return
	case "":
	default:
		log.Fatalf("unknown role %q", *role)
	}
	if *smoke {
		// The quota day at 20,000x takes 4.3 s. Faster, a token lives
		// milliseconds: on a busy machine the ticket fetched with it
		// can meet it dead every time, and no ticket is ever stored.
		*n, *rotations, *stormN, *speed, *apps, *rate, *steady, *counts = "10", 1, 10, 20000, 100, 1000, time.Second, "1,5"
		*tickets, *authorizers = true, 100
		*guardianScale = 720 // tokens of 10 s, a simulated day in 2 minutes
		*regionN, *regionRotations, *partition = 5, 2, 2*time.Second
		*sets, *setRotations, *keys = 3, 2, 200
		*guardianHour, *guardianHours, *guardianBaseline = 3*time.Second, 12, 4
		smokeRun = true
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	want := map[string]bool{}
	for _, p := range strings.Split(*part, ",") {
		want[strings.TrimSpace(p)] = true
	}
	run := func(name string) bool { return want["all"] || want[name] }
	fmt.Printf("goos: %s\ngoarch: %s\npkg: github.com/wxtoken/wxtoken/test/bench\ncpu: %s\n# cores %d, %s, at %s\n",
		runtime.GOOS, runtime.GOARCH, cpuModel(), runtime.NumCPU(), runtime.Version(), gitRevision())
	var table []row

	if run("read") {
		progress("read: Token() and a bucket read per call")
		token := testing.Benchmark(benchkit.TokenRead)
		perCall := testing.Benchmark(benchkit.KVGetPerCall)
		fmt.Fprintln(stderr)
		fmt.Printf("BenchmarkToken %d %.2f ns/op %d allocs/op\n", token.N, nsPerOp(token), token.AllocsPerOp())
		fmt.Printf("BenchmarkTokenKVGetPerCall %d %.0f ns/op %d allocs/op\n", perCall.N, nsPerOp(perCall), perCall.AllocsPerOp())
		ratio := nsPerOp(perCall) / nsPerOp(token)
		table = append(table,
			row{"1 token read", "Token(), RunParallel", fmt.Sprintf("%.2f ns/op, %d allocs", nsPerOp(token), token.AllocsPerOp()),
				fmt.Sprintf("kv.Get per call: %.1f µs/op, %d allocs", nsPerOp(perCall)/1000, perCall.AllocsPerOp()),
				fmt.Sprintf("%.0fx faster", ratio), "≤ 10 ns, 0 allocs, ≥ 10,000x",
				verdict(nsPerOp(token) <= 10 && token.AllocsPerOp() == 0 && ratio >= 10000)})
		progress("read: a Set's Token(key), %d keys", benchkit.SetKeys)
		setToken := testing.Benchmark(func(b *testing.B) { benchkit.SetTokenRead(b, false) })
		everyKey := testing.Benchmark(func(b *testing.B) { benchkit.SetTokenRead(b, true) })
		fmt.Fprintln(stderr)
		fmt.Printf("BenchmarkSetToken/keys=%d %d %.2f ns/op %d allocs/op\n", benchkit.SetKeys, setToken.N, nsPerOp(setToken), setToken.AllocsPerOp())
		fmt.Printf("BenchmarkSetTokenEveryKey/keys=%d %d %.2f ns/op %d allocs/op\n", benchkit.SetKeys, everyKey.N, nsPerOp(everyKey), everyKey.AllocsPerOp())
		table = append(table,
			row{fmt.Sprintf("1 set read, %d keys", benchkit.SetKeys), "Set.Token(key), RunParallel, a key per goroutine",
				fmt.Sprintf("%.2f ns/op, %d allocs", nsPerOp(setToken), setToken.AllocsPerOp()),
				fmt.Sprintf("a Subscriber's Token(): %.2f ns/op", nsPerOp(token)),
				fmt.Sprintf("%.1fx", nsPerOp(setToken)/nsPerOp(token)), "≤ 10 ns, 0 allocs",
				verdict(nsPerOp(setToken) <= 10 && setToken.AllocsPerOp() == 0)},
			row{fmt.Sprintf("1 set read, %d keys", benchkit.SetKeys), "Set.Token(key), RunParallel, every key in turn",
				fmt.Sprintf("%.2f ns/op, %d allocs", nsPerOp(everyKey), everyKey.AllocsPerOp()),
				fmt.Sprintf("a key per goroutine: %.2f ns/op", nsPerOp(setToken)),
				fmt.Sprintf("%.1fx", nsPerOp(everyKey)/nsPerOp(setToken)), "measured", ""})
	}
	if run("propagation") {
		for _, count := range ints(*n) {
			rounds := *rotations
			if !smokeRun {
				rounds = max(rounds, 20000/count)
			}
			p := propagation(count, rounds)
			fmt.Fprintln(stderr)
			table = append(table, propagationRows(fmt.Sprintf("Propagation/n=%d", count), fmt.Sprintf("2 propagation n=%d", count),
				fmt.Sprintf("KV write → held, %d rotations", rounds), p, "subscriber")...)
		}
	}
	if run("sets") {
		p := setPropagation(*sets, *keys, *setRotations)
		fmt.Fprintln(stderr)
		table = append(table, propagationRows(fmt.Sprintf("Propagation/sets=%d/keys=%d", *sets, *keys),
			fmt.Sprintf("2 propagation, %d sets of %d keys", *sets, *keys),
			fmt.Sprintf("KV write → held, %d rotations of random keys", *setRotations), p, "set")...)
	}
	if run("storm") {
		progress("storm: %d subscribers report the same stale token", *stormN)
		r := testing.Benchmark(func(b *testing.B) { benchkit.Storm(b, *stormN) })
		fmt.Fprintln(stderr)
		fmt.Printf("BenchmarkInvalidationStorm/n=%d %d %.0f ns/op %.3f upstream-calls/op %.2f p99-ms %.2f max-ms\n",
			*stormN, r.N, nsPerOp(r), r.Extra["upstream-calls/op"], r.Extra["p99-ms"], r.Extra["max-ms"])
		table = append(table, row{fmt.Sprintf("3 storm n=%d", *stormN), "Refresh(stale) from all at once",
			fmt.Sprintf("%.3f upstream calls/storm; all hold the new token: p99 %.1f ms, max %.1f ms", r.Extra["upstream-calls/op"], r.Extra["p99-ms"], r.Extra["max-ms"]),
			fmt.Sprintf("each instance fetching itself: %d calls", *stormN), fmt.Sprintf("%.0fx fewer calls", float64(*stormN)/r.Extra["upstream-calls/op"]),
			"exactly 1 call", verdict(r.Extra["upstream-calls/op"] == 1)})
	}
	if run("quota") {
		q := quotaDay(*speed)
		fmt.Fprintln(stderr)
		fmt.Printf("BenchmarkQuotaDay/wxtoken 1 %d upstream-calls/day %.4f valid-share\n", q.calls, q.validShare)
		fmt.Printf("BenchmarkQuotaDay/naive-10-instances 1 %d upstream-calls/day %.4f valid-share\n", q.naiveCalls, q.naiveValidShare)
		fmt.Printf("# quota: one day simulated in %s; floor ceil(86400 / (7200-600)) = %d\n", q.taken.Round(time.Millisecond), q.floor)
		table = append(table, row{"4 quota", "upstream calls per app per day, defaults",
			fmt.Sprintf("%d calls; token valid %.2f%% of minutes", q.calls, 100*q.validShare),
			fmt.Sprintf("floor %d; naive 10 instances / 2h: %d calls, tokens valid %.1f%% of instance-minutes", q.floor, q.naiveCalls, 100*q.naiveValidShare),
			fmt.Sprintf("%.2fx floor, %.1fx fewer than naive", float64(q.calls)/float64(q.floor), float64(q.naiveCalls)/float64(q.calls)),
			"at the floor; always valid", verdict(q.calls <= q.floor && q.validShare == 1)})
		for _, k := range q.kinds[1:] {
			fmt.Printf("BenchmarkQuotaDay/%s 1 %d upstream-calls/day %.4f valid-share\n", k.kind, k.calls, k.validShare)
			fmt.Printf("# quota: %s floor %s = %d\n", k.kind, k.floorRule, k.floor)
			table = append(table, row{"4 quota " + k.kind, "upstream calls per day, defaults",
				fmt.Sprintf("%d calls; valid %.2f%% of minutes", k.calls, 100*k.validShare),
				fmt.Sprintf("floor %d (%s)", k.floor, k.floorRule),
				fmt.Sprintf("%.2fx floor", float64(k.calls)/float64(k.floor)), "measured per kind", ""})
		}
	}
	if run("apps") {
		a := manyApps(*apps, *tickets, *rate, *steady)
		fmt.Fprintln(stderr)
		name, what := fmt.Sprintf("apps=%d", a.apps), fmt.Sprintf("5 apps n=%d", a.apps)
		if *tickets {
			name = fmt.Sprintf("apps=%d/credentials=%d", a.apps, a.credentials)
			what = fmt.Sprintf("5 apps n=%d with jsapi tickets (%d credentials)", a.apps, a.credentials)
		}
		fmt.Printf("BenchmarkManyApps/%s 1 %.1f s-to-all-tokens %d max-calls/s %.0f cpu-s/hour %d peak-rss-bytes\n",
			name, a.allTokens.Seconds(), a.maxPerSecond, a.cpuPerHour.Seconds(), a.peakRSS)
		table = append(table, row{what, fmt.Sprintf("one refresher, --upstream-rate %g", a.rate),
			fmt.Sprintf("all in the bucket in %.1f s; max %d calls in any 1 s (%d per calendar second); steady CPU %.2f%% of a core (%.1f s/hour); peak RSS %.0f MB",
				a.allTokens.Seconds(), a.maxPerSecond, a.maxPerBucket, 100*a.cpuShare, a.cpuPerHour.Seconds(), float64(a.peakRSS)/(1<<20)),
			fmt.Sprintf("pacing floor %.0f s", a.pacingFloor.Seconds()),
			fmt.Sprintf("%.3fx floor", a.allTokens.Seconds()/a.pacingFloor.Seconds()),
			"≤ rate/s, ≤ 1.1x floor, ≤ 200 MB, ≤ 1% CPU",
			verdict(float64(a.maxPerSecond) <= a.rate && a.allTokens.Seconds() <= 1.1*a.pacingFloor.Seconds() && a.peakRSS <= 200<<20 && a.cpuShare <= 0.01)})
	}
	if run("footprint") {
		samples := footprint(ints(*counts))
		base := samples[0]
		for _, s := range samples[1:] {
			fmt.Printf("BenchmarkFootprint/apps=%d 1 %d extra-rss-bytes %d extra-goroutines\n", s.Subscribers, s.RSS-base.RSS, s.Goroutines-base.Goroutines)
			table = append(table, row{fmt.Sprintf("6 footprint %d apps", s.Subscribers), "a process following them",
				fmt.Sprintf("+%.1f MB RSS, +%d goroutines", float64(s.RSS-base.RSS)/(1<<20), s.Goroutines-base.Goroutines),
				fmt.Sprintf("connected, no subscriber: %.1f MB, %d goroutines", float64(base.RSS)/(1<<20), base.Goroutines), "", "", ""})
		}
	}

	if run("follow") {
		set, subs := followFootprint(*keys)
		fmt.Fprintln(stderr)
		for _, f := range []followed{set, subs} {
			benchLine(fmt.Sprintf("Follow/keys=%d/%s", f.Keys, f.Mode), 1, f.rssAdded(), "extra-rss-bytes", f.heapAdded()/int64(f.Keys), "heap-bytes/key",
				f.goroutinesAdded(), "extra-goroutines", fmt.Sprintf("%.3f", f.Ready.Seconds()), "s-to-ready")
		}
		table = append(table, row{fmt.Sprintf("6 follow %d keys", *keys), "one Set in a process: RSS, goroutines, every key held",
			fmt.Sprintf("+%.1f MB RSS (%s per key), heap %s per key, +%d goroutines, ready in %.2f s",
				mb(set.rssAdded()), bytesText(set.rssAdded()/int64(set.Keys)), bytesText(set.heapAdded()/int64(set.Keys)), set.goroutinesAdded(), set.Ready.Seconds()),
			fmt.Sprintf("a Subscriber per key: +%.1f MB RSS (%s per key), +%d goroutines, ready in %.2f s",
				mb(subs.rssAdded()), bytesText(subs.rssAdded()/int64(subs.Keys)), subs.goroutinesAdded(), subs.Ready.Seconds()),
			fmt.Sprintf("%.0fx less RSS, %.0fx faster", float64(subs.rssAdded())/float64(max(set.rssAdded(), 1)), subs.Ready.Seconds()/set.Ready.Seconds()),
			"≤ 20 MB (≤ 2 KB/key), ≤ 10 goroutines, ready ≤ 2 s",
			verdict(set.rssAdded() <= 20<<20 && set.goroutinesAdded() <= 10 && set.Ready <= 2*time.Second)})
	}
	if run("agentkeys") {
		runs := agentKeys(*keys, *agentBefore)
		fmt.Fprintln(stderr)
		for _, r := range runs {
			benchLine(fmt.Sprintf("AgentKeys/%s/keys=%d", r.build, r.keys), 1, fmt.Sprintf("%.3f", r.ready.Seconds()), "s-to-ready",
				r.rss, "rss-bytes", r.peak, "peak-rss-bytes")
		}
		one, all, bytes, _ := perKey(runs, "after")
		baseline := "not run (give -agent-before REV)"
		ratio := ""
		if bOne, bAll, bBytes, ok := perKey(runs, "before"); ok {
			baseline = "before (" + *agentBefore + ", a Subscriber per key): " + describeAgent(bOne, bAll, bBytes)
			ratio = fmt.Sprintf("%.0fx less memory per key, start %.1fx faster", float64(bBytes)/float64(max(bytes, 1)), bAll.ready.Seconds()/all.ready.Seconds())
		}
		table = append(table, row{fmt.Sprintf("7 agent, %d keys", *keys), "wxtoken agent serving every key: start (to /readyz 200) and memory",
			describeAgent(one, all, bytes), baseline, ratio, "memory per key in bytes", verdict(bytes < 10000)})
	}

	if run("agent") {
		a := agentBench(agentOptions{reads: *reads, clients: *freshClients, rounds: *agentRounds, wrk: *wrkArgs, calls: *calls,
			requireTools: *requireTools, smoke: smokeRun})
		fmt.Fprintln(stderr)
		table = append(table, agentRows(a)...)
	}
	if run("login") {
		exchanges := *calls
		if smokeRun {
			exchanges = 50
		}
		l := loginBench(exchanges)
		fmt.Fprintln(stderr)
		table = append(table, loginRows(l)...)
	}
	if run("authorizers") {
		a := manyAuthorizers(authorizersOptions{authorizers: *authorizers, rate: *rate, profileDir: *profileDir, memLimit: *memLimit, steady: *steady})
		fmt.Fprintln(stderr)
		benchLine(fmt.Sprintf("Authorizers/n=%d", a.authorizers), 1, fmt.Sprintf("%.1f", a.allTokens.Seconds()), "s-to-all-tokens",
			a.maxPerSecond, "max-calls/s", a.peakRSS, "peak-rss-bytes", fmt.Sprintf("%.3f", a.steadyCPU), "steady-cpu-s/s", a.restartTotal(), "restart-calls")
		fmt.Printf("# authorizers: first run %s; restart ready in %s, calls counted for %s after the first process exited: %s; "+
			"restart peak RSS %d bytes; %d of %d tokens invalid, %d refresh tokens WeChat no longer takes\n",
			describeCalls(a.firstCalls), a.restartReady.Round(time.Millisecond), a.restartWatched.Round(time.Millisecond),
			describeCalls(a.restartCalls), a.restartPeakRSS, a.invalid, a.tokens, a.staleRefresh)
		table = append(table, row{fmt.Sprintf("8 authorizers n=%d", a.authorizers), fmt.Sprintf("one platform, --upstream-rate %g; then a restart", a.rate),
			fmt.Sprintf("all %d tokens in the bucket in %.1f s; max %d calls in any 1 s (%d per calendar second); peak RSS %.0f MB; "+
				"then %.3f CPU-s/s over %s holding them; "+
				"restart: %d calls to WeChat in %.1f s, %d of %d tokens valid, peak RSS %.0f MB",
				a.tokens, a.allTokens.Seconds(), a.maxPerSecond, a.maxPerBucket, float64(a.peakRSS)/(1<<20), a.steadyCPU, *steady,
				a.restartTotal(), a.restartWatched.Seconds(), a.tokens-a.invalid, a.tokens, float64(a.restartPeakRSS)/(1<<20)),
			fmt.Sprintf("pacing floor %d / %g = %.1f s", a.authorizers+1, a.rate, a.pacingFloor.Seconds()),
			fmt.Sprintf("%.3fx floor", a.allTokens.Seconds()/a.pacingFloor.Seconds()),
			fmt.Sprintf("≤ rate/s, ≤ 1.1x floor, ≤ %d MB, restart 0 calls, every token valid", a.rssTarget()>>20),
			verdict(float64(a.maxPerSecond) <= a.rate && a.allTokens.Seconds() <= 1.1*a.pacingFloor.Seconds() &&
				a.peakRSS <= a.rssTarget() && a.restartPeakRSS <= a.rssTarget() && a.restartTotal() == 0 && a.invalid == 0)})
	}
	if run("regions") {
		r := regionsBench(*regionN, *regionRotations, *delay, *partition)
		fmt.Fprintln(stderr)
		table = append(table, regionsRows(r)...)
	}

	if run("guardian-cost") {
		o := guardianOptions{apps: *apps, before: *guardianBefore, scale: *guardianScale, window: *guardianWindow, profiles: *guardianProfiles}
		if o.window <= 0 {
			o.window = 2 * scaled(realLifetime, o.scale)
		}
		runs := guardianCost(o)
		fmt.Fprintln(stderr)
		table = append(table, guardianRows(runs, o)...)
	}
	if run("guardian") {
		g := guardianBench(*guardianHour, *guardianHours, *guardianBaseline)
		table = append(table, guardianDayRows(g)...)
	}

	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "part\tmeasure\twxtoken\tbaseline (same run)\tratio\ttarget\tmet")
	for _, r := range table {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.part, r.measure, r.result, r.baseline, r.ratio, r.target, r.met)
	}
	w.Flush()
}

type row struct{ part, measure, result, baseline, ratio, target, met string }

// smokeRun marks a run too small for its figures to mean anything.
var smokeRun bool

func verdict(ok bool) string {
	if smokeRun {
		return "smoke"
	}
	if ok {
		return "yes"
	}
	return "NO"
}

func nsPerOp(r testing.BenchmarkResult) float64 { return float64(r.T.Nanoseconds()) / float64(r.N) }

func ints(list string) []int {
	var out []int
	for _, s := range strings.Split(list, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			log.Fatalf("not a number: %q", s)
		}
		out = append(out, v)
	}
	return out
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if name, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
		}
	}
	return "unknown"
}

// propagationRows prints a propagation run's benchmark lines and returns
// its table rows: wxtoken against the durable floor (the target) and the
// core floor.
func propagationRows(name, part, measure string, p propagated, what string) []row {
	for _, l := range []struct {
		kind string
		d    dist
	}{{what, p.wxtoken}, {"durable-floor", p.durable}, {"durable-floor-from-request", p.durableClient}, {"core-floor", p.core},
		{what + "-first-rotation", p.first}, {"durable-floor-first-round", p.firstDurable}} {
		benchLine(name+"/"+l.kind, l.d.n, fmt.Sprintf("%.3f", ms(l.d.p50)), "p50-ms", fmt.Sprintf("%.3f", ms(l.d.p90)), "p90-ms",
			fmt.Sprintf("%.3f", ms(l.d.p99)), "p99-ms", fmt.Sprintf("%.3f", ms(l.d.max)), "max-ms")
	}
	// The followers' CPU time per receipt, beside the latencies, where it
	// was measured (in this process).
	cpu := ""
	if p.cpu > 0 {
		benchLine(name+"/"+what+"-cpu", p.wxtoken.n, fmt.Sprintf("%.2f", us(p.cpu)), "cpu-us/receipt")
		benchLine(name+"/durable-floor-cpu", p.durable.n, fmt.Sprintf("%.2f", us(p.durableCPU)), "cpu-us/receipt")
		cpu = fmt.Sprintf("; CPU a receipt %.1f against %.1f µs", us(p.cpu), us(p.durableCPU))
	}
	durable := float64(p.wxtoken.p99) / float64(p.durable.p99)
	core := float64(p.wxtoken.p99) / float64(p.core.p99)
	return []row{{part, measure,
		fmt.Sprintf("p50 %.1f / p99 %.1f / max %.1f ms (the first rotation after start, apart: max %.1f ms)", ms(p.wxtoken.p50), ms(p.wxtoken.p99), ms(p.wxtoken.max), ms(p.first.max)),
		fmt.Sprintf("durable floor (CAS write, ack, fan-out), from the write: p50 %.1f / p99 %.1f / max %.1f ms (from the request: p99 %.1f ms); core fan-out: p50 %.1f / p99 %.1f / max %.1f ms",
			ms(p.durable.p50), ms(p.durable.p99), ms(p.durable.max), ms(p.durableClient.p99), ms(p.core.p50), ms(p.core.p99), ms(p.core.max)),
		fmt.Sprintf("p99 %.2fx durable, %.2fx core%s", durable, core, cpu),
		"p99 ≤ 1.15x durable floor", verdict(durable <= 1.15)}}
}
