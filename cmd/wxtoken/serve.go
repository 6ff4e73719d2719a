package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

const serveSummary = `Run the refresher: fetch each app's access_token from WeChat before it
expires, store it in the token bucket, publish rotations, answer refresh
requests. With no --nats-url it starts an embedded NATS server with JetStream
(data in --data-dir, clients on --nats-listen), so this one command runs the
whole system; the data directory is locked while it runs, so that a second
serve on it exits instead of corrupting it. Apps come from --apps, or from
WECHAT_APPID with WECHAT_APPSECRET or WECHAT_APPSECRET_FILE. Third-party
platforms (platforms: in the apps file) need --callback-addr on at least one
replica, for the verify tickets and authorization events WeChat pushes.

SIGHUP reloads the apps file and the secrets (other settings need a
restart), and probes every app again at once; SIGTERM or SIGINT finishes the fetches under way, releases the
leader lease and exits.`

const serveExamples = `  # Try it: embedded NATS, a fake WeChat on 127.0.0.1:8181, a demo app with 60s
  # tokens and a jsapi_ticket, a stable_token demo app, and the agent on
  # 127.0.0.1:8180; "wxtoken demo reject APPID" makes the fake reject a token,
  # "wxtoken demo fetch APPID" fetches one as another party would
  wxtoken serve --demo

  # One app, embedded NATS
  WECHAT_APPID=wx1234567890abcdef WECHAT_APPSECRET_FILE=/run/secrets/wx wxtoken serve

  # A third-party platform: WeChat pushes to https://HOST/wechat/platform/events,
  # proxied to the callback address
  wxtoken serve --apps /etc/wxtoken/apps.yaml --callback-addr 127.0.0.1:8090

  # Many apps against a NATS cluster
  wxtoken serve --apps /etc/wxtoken/apps.yaml \
    --nats-url nats://n1:4222,nats://n2:4222,nats://n3:4222 --replicas 3`

type serveFlags struct {
	cmd        *command
	nats       natsFlags
	listen     string
	natsConfig string
	dataDir    string
	appsFile   string
	baseURL    string
	replicas   int
	history    int
	cfg        publisher.Config
	httpAddr   string
	httpToken  string // --http-token-file: the file
	token      string // what it holds
	pprof      bool   // serve /debug/pprof/ on httpAddr
	callback   string
	logFormat  string
	logLevel   string
	demo       bool
	demoWeChat string // the demo's fake WeChat: host:port
	demoAgent  string // the demo's agent: host:port, or off
	regions    string // the regions whose copies to follow, comma-separated
	// quotaRescue is --quota-rescue (Config.QuotaRescueOff's opposite).
	quotaRescue bool
}

func serve(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	// SIGHUP reloads the apps, as daemons of this kind do; it must never
	// kill the process, not even while it reads its flags or starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var f serveFlags
	c := newCommand("serve", "", serveSummary, serveExamples)
	f.cmd = c
	f.nats.register(c, "NATS server URLs, comma-separated; empty starts an embedded server", withBucket|withSubject)
	c.String(&f.listen, "nats-listen", "WXTOKEN_NATS_LISTEN", embedded.DefaultListen, "embedded NATS: `host:port` for clients")
	c.String(&f.natsConfig, "nats-config", "WXTOKEN_NATS_CONFIG", "", "embedded NATS: nats-server configuration `file` (users, TLS, ...)")
	c.String(&f.dataDir, "data-dir", "WXTOKEN_DATA_DIR", "wxtoken-data", "embedded NATS: JetStream storage `directory`")
	c.String(&f.appsFile, "apps", "WXTOKEN_APPS", "", "apps `file` (YAML); see the README")
	c.String(&f.baseURL, "wechat-base-url", "WECHAT_BASE_URL", publisher.DefaultUpstreamURL,
		"WeChat API base `URLs`, comma-separated, in order: two failures in a row on one\n(no answer, HTTP 5xx, errcode -1) move calls to the next")
	c.Duration(&f.cfg.UpstreamRecheck, "wechat-base-recheck", "WECHAT_BASE_RECHECK", publisher.DefaultUpstreamRecheck,
		"after this long on a later --wechat-base-url, one call tries the first again")
	c.String(&f.cfg.WeComURL, "wecom-base-url", "WECOM_BASE_URL", publisher.DefaultWeComURL, "WeCom (企业微信) API base `URL`, for apps with a corpid")
	c.Int(&f.replicas, "replicas", "WXTOKEN_REPLICAS", 1, "replicas of the KV buckets (3 in a 3-node cluster)")
	c.Int(&f.history, "history", "WXTOKEN_HISTORY", 1, "revisions kept per token key (1-64)")
	c.String(&f.cfg.Schedule, "schedule", "WXTOKEN_SCHEDULE", publisher.DefaultSchedule, "cron `spec` of the refresh check")
	c.Duration(&f.cfg.RefreshBefore, "refresh-before", "WXTOKEN_REFRESH_BEFORE", publisher.DefaultRefreshBefore,
		"replace a token this long before it expires (cut to half the lifetime for short-lived tokens)")
	c.Duration(&f.cfg.MinForceInterval, "min-force-interval", "WXTOKEN_MIN_FORCE_INTERVAL", publisher.DefaultMinForceInterval,
		"least time between two forced refreshes of one app")
	c.Duration(&f.cfg.LeaseTTL, "lease-ttl", "WXTOKEN_LEASE_TTL", publisher.DefaultLeaseTTL, "leader lease lifetime; a standby takes over about this long after the leader dies")
	c.Duration(&f.cfg.UpstreamTimeout, "upstream-timeout", "WXTOKEN_UPSTREAM_TIMEOUT", publisher.DefaultUpstreamTimeout,
		"bound of one call to WeChat for a token or ticket (at most half the lease TTL;\nnot the agent's --upstream-timeout, which bounds a forwarded API call)")
	c.String(&f.cfg.SourceAddr, "wechat-source-addr", "WECHAT_SOURCE_ADDR", "",
		"local IP `address` the calls to WeChat and WeCom go out from: the one in the apps' IP whitelists\n(default: the system's choice)")
	c.Duration(&f.cfg.ProbeEvery, "probe-every", "WXTOKEN_PROBE_EVERY", publisher.DefaultProbeEvery,
		"probe each app's secret from this replica at start and this often (0: off), to prove it could lead")
	c.Duration(&f.cfg.QuotaEvery, "quota-every", "WXTOKEN_QUOTA_EVERY", publisher.DefaultQuotaEvery,
		"as leader, ask WeChat's quota/get this often how many calls to each app's token paths were made today\n(0: off), to see another party's fetches; the agents' paths at most once an hour")
	c.Bool(&f.quotaRescue, "quota-rescue", "WXTOKEN_QUOTA_RESCUE", true,
		"when a token, ticket or platform token fetch gets 45009 and the value held expires before 00:00\nChina time, reset the quota (quota/clear, clear_quota, clear_quota/v2; a platform's own) and fetch again;\n--quota-rescue=false resets nothing and keeps the events and log lines")
	c.Int(&f.cfg.QuotaClearReserve, "quota-clear-reserve", "WXTOKEN_QUOTA_CLEAR_RESERVE", publisher.DefaultQuotaClearReserve,
		"of the account's 10 quota resets a month, how many the rescue leaves for the console")
	c.Float(&f.cfg.UpstreamRate, "upstream-rate", "WXTOKEN_UPSTREAM_RATE", publisher.DefaultUpstreamRate, "most token fetches per second, across all apps")
	c.String(&f.cfg.Instance, "instance", "WXTOKEN_INSTANCE", "", "name of this replica in the lease and the logs (default host-pid)")
	c.String(&f.httpAddr, "http-addr", "WXTOKEN_HTTP_ADDR", "", "serve the status page (/), /metrics (Prometheus), /healthz and /readyz on `host:port`,\ne.g. 127.0.0.1:9090 (with --demo: "+defaultDemoHTTPListen+")")
	c.String(&f.httpToken, "http-token-file", "WXTOKEN_HTTP_TOKEN_FILE", "",
		"`file` holding a token that the status page, /metrics and /debug/pprof/ then require (bearer,\nor basic auth's password); without it, on an --http-addr that is not loopback, the page is not served")
	c.Bool(&f.pprof, "pprof", "WXTOKEN_PPROF", false, "with --http-addr: also serve Go's profiles (CPU, heap, goroutines) under /debug/pprof/")
	c.String(&f.callback, "callback-addr", "WXTOKEN_CALLBACK_ADDR", "",
		"serve the third-party platforms' authorization-event URL, POST "+callbackPath+", on `host:port` (every replica may)")
	c.String(&f.cfg.PlatformBucket, "platform-bucket", "WXTOKEN_PLATFORM_BUCKET", kv.DefaultPlatformBucket,
		"KV bucket of the platforms' verify tickets and refresh tokens")
	c.String(&f.cfg.JSDomain, "hub-domain", "WXTOKEN_HUB_DOMAIN", "",
		"for a replica in a region, connected to the region's NATS: the hub's JetStream domain,\nwhere its buckets and its lease are")
	c.String(&f.regions, "regions", "WXTOKEN_REGIONS", "",
		"the regions (their JetStream domains, comma-separated) whose copies of the bucket to follow,\nas wxtoken_region_lag_seconds{region}")
	c.String(&f.logFormat, "log-format", "WXTOKEN_LOG_FORMAT", "text", "log format: text or json")
	c.String(&f.logLevel, "log-level", "WXTOKEN_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	c.Bool(&f.demo, "demo", "", false, "run an embedded fake WeChat, two demo apps (tokens of 60s with a jsapi_ticket, and a\nstable_token app) and an agent; --min-force-interval is 5s and --quota-every 10s unless\ngiven (no variable, on purpose: a fake WeChat is asked for on the command line)")
	c.String(&f.demoWeChat, "demo-wechat-listen", "WXTOKEN_DEMO_WECHAT_LISTEN", defaultDemoWeChatListen,
		"with --demo: `host:port` of the fake WeChat (loopback only)")
	c.String(&f.demoAgent, "demo-agent-listen", "WXTOKEN_DEMO_AGENT_LISTEN", defaultDemoAgentListen,
		"with --demo: `host:port` of the agent (loopback only), or off")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q: serve takes flags only, such as --apps FILE (see wxtoken serve --help)", rest[0])
	}
	if err := f.nats.check(); err != nil {
		return err
	}
	if f.nats.url != "" {
		for _, name := range []string{"nats-listen", "nats-config", "data-dir"} {
			if c.given(name) {
				return usagef("--%s is for the embedded NATS server, which --nats-url replaces", name)
			}
		}
	}
	if f.demo && f.appsFile != "" {
		return usagef("--demo brings its own app and fake WeChat; drop --apps")
	}
	for _, flag := range []struct{ name, addr string }{{"demo-wechat-listen", f.demoWeChat}, {"demo-agent-listen", f.demoAgent}} {
		if !f.demo && c.given(flag.name) {
			return usagef("--%s is for --demo", flag.name)
		}
		if err := checkDemoListen(flag.name, flag.addr); f.demo && err != nil {
			return err
		}
	}
	if err := f.checkAddrs(); err != nil {
		return err
	}
	if f.demo && !c.given("http-addr") {
		f.httpAddr = defaultDemoHTTPListen
	}
	if f.httpToken != "" && f.httpAddr == "" {
		return usagef("--http-token-file protects what --http-addr serves: give --http-addr too")
	}
	if f.httpToken != "" {
		if f.token, err = readHTTPToken(f.httpToken); err != nil {
			return err
		}
	}
	if f.pprof && f.httpAddr == "" {
		return usagef("--pprof serves the profiles on --http-addr: give --http-addr too")
	}
	if err := f.checkNoZero(); err != nil {
		return err
	}
	for _, r := range splitList(f.regions) {
		if err := region.ValidateDomain(r); err != nil {
			return usagef("--regions: %v", err)
		}
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	f.cfg.Logger = log
	f.cfg.Bucket, f.cfg.SubjectPrefix = f.nats.bucket, f.nats.prefix
	f.cfg.Replicas, f.cfg.History = f.replicas, f.history
	f.cfg.UpstreamURL = f.baseURL
	f.cfg.QuotaRescueOff = !f.quotaRescue

	apps := func() ([]publisher.App, error) {
		if f.demo {
			return demoApps(), nil
		}
		return loadApps(f.appsFile, getenv)
	}
	if f.cfg.Apps, err = apps(); err != nil {
		return err
	}
	if f.demo && !c.given("min-force-interval") {
		f.cfg.MinForceInterval = demoMinForceInterval
	}
	if f.demo && !c.given("quota-every") {
		f.cfg.QuotaEvery = demoQuotaEvery
	}
	// Everything the flags say is checked before anything starts.
	if err := f.cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	if f.callback != "" && !slices.ContainsFunc(f.cfg.Apps, func(a publisher.App) bool { return a.Platform != nil }) {
		return usagef("--callback-addr serves third-party platforms, and the apps file has none (platforms:)")
	}

	// The store directory is locked before anything starts, the demo's
	// fake WeChat included: a second serve on it is told at once, and
	// about that rather than about a port.
	var ownNATS *embeddedNATS
	if f.nats.url == "" {
		if ownNATS, err = f.lockEmbedded(); err != nil {
			return err
		}
		defer ownNATS.release()
	}

	ctx, stop := signalContext()
	defer stop()
	var d *demo
	if f.demo {
		if d, err = f.startDemo(log); err != nil {
			return err
		}
		defer d.stop()
		f.cfg.UpstreamURL, f.cfg.WeComURL = d.wechatURL, d.wechatURL
	}

	// A connection closed for good (NATS refused the credentials twice)
	// ends the refresher: nothing more can come of it.
	ctx, closedNATS := context.WithCancelCause(ctx)
	defer closedNATS(nil)
	nc, shutdownNATS, err := f.connect(log, ownNATS, func(err error) { closedNATS(err) })
	if err != nil {
		return err
	}
	defer shutdownNATS()
	if d != nil {
		d.adoptHeld(nc, f.nats.bucket, log)
	}

	reg := newRegistry()
	f.cfg.Registerer = reg
	refresher, err := publisher.New(nc, f.cfg)
	if err != nil {
		return err
	}
	if f.regions != "" {
		stopMonitor, err := followRegions(ctx, nc, f.nats.bucket, splitList(f.regions), reg, log)
		if err != nil {
			return err
		}
		defer stopMonitor()
	}
	if f.httpAddr != "" {
		ops, err := startOps(f.httpAddr, reg, refresher.Ready, f.pprof, refresher.StatusPage(), f.token, log)
		if err != nil {
			return err
		}
		defer ops.stop()
		if d != nil {
			d.pageURL = pageURL(ops.addr)
		}
	}
	if f.callback != "" {
		cb, err := startCallback(f.callback, refresher.Callback(), log)
		if err != nil {
			return err
		}
		defer cb.stop()
	}
	if d != nil {
		stopAgent, err := d.startAgent(nc, refresher.Ready, log)
		if err != nil {
			return err
		}
		defer stopAgent()
		log.Info("demo: watch the tokens and the ticket rotate with `go run ./cmd/wxtoken watch` or `go run ./cmd/wxtoken status`; "+
			"sign a page with `go run ./cmd/wxtoken sign "+demoAppID+" https://example.com/`",
			"apps", demoAppID+","+demoStableAppID, "min_force_interval", f.cfg.MinForceInterval, "quota_every", f.cfg.QuotaEvery,
			"be_another_party", "go run ./cmd/wxtoken demo fetch "+demoAppID+demoListenFlag(f.demoWeChat, defaultDemoWeChatListen), "status_page", d.pageURL)
	}
	reloads, stopReloads := context.WithCancel(ctx)
	reloaded := make(chan struct{})
	defer func() {
		stopReloads()
		<-reloaded
	}()
	go func() {
		defer close(reloaded)
		for {
			select {
			case <-reloads.Done():
				return
			case <-hup:
				reload(log, refresher, apps)
			}
		}
	}()
	err = refresher.Run(ctx)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	log.Info("stopped")
	return err
}

// followRegions follows the regions' copies of bucket until the returned
// func is called.
func followRegions(ctx context.Context, nc *nats.Conn, bucket string, regions []string, reg prometheus.Registerer, log *slog.Logger) (func(), error) {
	m, err := region.NewMonitor(nc, bucket, regions, reg, log)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--regions: %v", err)}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}, nil
}

// checkAddrs refuses an address that would fail only once NATS and the
// refresher are up.
func (f *serveFlags) checkAddrs() error {
	for _, a := range []struct{ flag, addr, example string }{
		{"http-addr", f.httpAddr, "127.0.0.1:9090"},
		{"callback-addr", f.callback, "127.0.0.1:8090"},
		{"nats-listen", f.listen, embedded.DefaultListen},
	} {
		if a.addr == "" || (a.flag == "nats-listen" && f.nats.url != "") {
			continue
		}
		if err := checkAddr(a.addr); err != nil {
			_, port, _ := strings.Cut(a.example, ":")
			return usagef("--%s %q: write host:port, such as %s, or :%s for every interface", a.flag, a.addr, a.example, port)
		}
	}
	return nil
}

// checkAddr checks a host:port to listen on: the port a number (-1 and 0
// pick one) or a service name.
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if port == "-1" {
		return nil
	}
	_, err = net.LookupPort("tcp", port)
	return err
}

// checkNoZero refuses a zero that publisher.Config would take for "the
// default": --upstream-rate 0 must not silently become 50. The flags'
// defaults are not zero, so a zero was given.
func (f *serveFlags) checkNoZero() error {
	for _, z := range []struct {
		flag string
		zero bool
		give string
	}{
		{"upstream-rate", f.cfg.UpstreamRate == 0, "at least 0.01 (calls per second; 0.01 is one every 100 s)"},
		{"refresh-before", f.cfg.RefreshBefore == 0, "a positive duration such as 10m"},
		{"min-force-interval", f.cfg.MinForceInterval == 0, "a positive duration such as 30s"},
		{"lease-ttl", f.cfg.LeaseTTL == 0, "a duration of at least 1s, such as 10s"},
		{"upstream-timeout", f.cfg.UpstreamTimeout == 0, "a positive duration such as 5s, at most half --lease-ttl"},
		{"wechat-base-recheck", f.cfg.UpstreamRecheck == 0, "a positive duration such as 10m"},
		{"replicas", f.replicas == 0, "1, or 3 in a 3-node cluster"},
		{"history", f.history == 0, "a number from 1 to 64"},
	} {
		if z.zero {
			return usagef("--%s 0: give %s", z.flag, z.give)
		}
	}
	return nil
}

// reload reads the apps again, with their secrets, and hands them to the
// refresher. An apps file that does not load leaves the running apps as
// they are.
func reload(log *slog.Logger, refresher *publisher.Refresher, apps func() ([]publisher.App, error)) {
	log.Info("SIGHUP: reloading the apps")
	loaded, err := apps()
	if err == nil {
		err = refresher.SetApps(loaded)
	}
	if err != nil {
		log.Error("reload refused; the running apps stay", "error", err)
	}
}

// loadApps reads the apps file and the single app of the environment.
// What is wrong with them is a usage error: the configuration cannot run.
func loadApps(file string, getenv func(string) string) ([]publisher.App, error) {
	var apps []publisher.App
	if file != "" {
		fromFile, err := publisher.LoadAppsFile(file, getenv)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		apps = fromFile
	}
	app, ok, err := publisher.AppFromEnv(getenv)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	if ok {
		apps = append(apps, app)
	}
	if len(apps) == 0 {
		return nil, usagef("no apps: give --apps FILE, or WECHAT_APPID with WECHAT_APPSECRET (or --demo to try it out)")
	}
	return apps, nil
}

// connect connects to --nats-url, or starts the embedded server (when
// own is not nil) and connects to it. The returned func closes the
// connection and stops the server. closed is told when the connection
// closes for good before that.
func (f *serveFlags) connect(log *slog.Logger, own *embeddedNATS, closed func(error)) (*nats.Conn, func(), error) {
	opts := f.nats.longLived("wxtoken serve", log, closed)
	if own == nil {
		nc, err := f.nats.dialForever(opts, log)
		if err != nil {
			return nil, nil, err
		}
		return nc, nc.Close, nil
	}

	srv, stopServer, err := own.start(log)
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(srv.ClientURL(), append(opts, nats.InProcessServer(srv))...)
	if err != nil {
		stopServer()
		return nil, nil, fmt.Errorf("cannot connect to the embedded NATS server: %w", err)
	}
	return nc, func() {
		nc.Close()
		stopServer()
	}, nil
}

// natsLogEvery spaces the warnings of a NATS server that stays unreachable.
const natsLogEvery = 5 * time.Second

// reconnectDelay is the pause before the next round of connection attempts:
// from 250ms, doubling to 2s, plus up to a tenth at random so that replicas
// that lost the same server do not come back in the same instant. The
// ceiling is low because a leader that stays away longer than its lease
// (10s by default) loses it.
func reconnectDelay(attempts int) time.Duration {
	d := min(250*time.Millisecond<<min(max(attempts-1, 0), 3), 2*time.Second)
	return d + rand.N(d/10+1)
}

// throttledWarning returns a func that logs msg with its arguments, at most
// once per every, and counts what it left out.
func throttledWarning(log *slog.Logger, every time.Duration, msg string) func(args ...any) {
	var mu sync.Mutex
	var last time.Time
	var skipped int
	return func(args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < every {
			skipped++
			return
		}
		if skipped > 0 {
			args = append(args, "attempts_since_last_warning", skipped+1)
		}
		log.Warn(msg, args...)
		last, skipped = time.Now(), 0
	}
}
