package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/lease"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/platform"
	"github.com/wxtoken/wxtoken/publisher/internal/source"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Version is reported by the refresh service to `nats micro info`.
const Version = "0.1.0"

// Config is the refresher's configuration. Zero fields take the defaults.
type Config struct {
	Apps []App

	Bucket string // token bucket; kv.DefaultBucket
	// PlatformBucket holds third-party platforms' verify tickets and
	// their authorizers' refresh tokens; kv.DefaultPlatformBucket. It is
	// opened only when Apps has a platform, and so is the callbacks'
	// replay bucket beside it (kv.ReplayBucket).
	PlatformBucket string
	Replicas       int    // replicas of the buckets; 1
	History        int    // revisions kept per key; 1
	SubjectPrefix  string // kv.DefaultSubjectPrefix
	// JSDomain is the JetStream domain of the hub's buckets, for a replica
	// in a region, connected to the region's NATS (see region.go); empty:
	// the buckets of the NATS it is connected to.
	JSDomain string

	// Schedule is the cron spec of the refresh check; DefaultSchedule.
	Schedule string
	// RefreshBefore is how long before expiry a token is replaced. For a
	// token that lives less than twice as long it is cut to half the
	// lifetime, so short-lived tokens are replaced in time too.
	RefreshBefore time.Duration
	// MinForceInterval is the least time between two forced refreshes of one app.
	MinForceInterval time.Duration
	// LeaseTTL is how long the leader's lease lasts without renewal.
	LeaseTTL time.Duration

	// RetryBackoff and RetryBackoffMax bound the pause after transient
	// failures: it doubles per consecutive failure from RetryBackoff up to
	// RetryBackoffMax, half of it random; 1s and 1m by default.
	RetryBackoff, RetryBackoffMax time.Duration
	// ConfigErrorBackoff is the pause after a configuration error (wrong
	// secret, IP not whitelisted): such errors need a human, and calling
	// again sooner would only burn quota; 10m by default.
	ConfigErrorBackoff time.Duration

	// UpstreamURL is WeChat's API bases, comma-separated, in order of
	// preference: a call goes to the next after two failures in a row on
	// one (no answer, HTTP 5xx, errcode -1), and one call tries the first
	// again UpstreamRecheck later (failover.DefaultRecheck); see the README's
	// "WeChat's second domain". DefaultUpstreamURL.
	UpstreamURL     string
	UpstreamRecheck time.Duration
	WeComURL        string        // WeCom's API, for WeCom apps; DefaultWeComURL
	UpstreamTimeout time.Duration // per call; DefaultUpstreamTimeout
	// UpstreamRate paces token fetches across all apps, in calls per
	// second, so ten thousand apps do not all call in the same second.
	UpstreamRate float64
	HTTPClient   *http.Client
	// SourceAddr is the local IP address the calls to WeChat and WeCom go
	// out from, the one an app's IP whitelist must hold; the system's
	// choice when empty. Not with HTTPClient.
	SourceAddr string
	// ProbeEvery is how often this replica asks WeChat whether it could
	// use each app's secret (probes.go), spread over the interval; 0
	// probes nothing. serve's --probe-every is DefaultProbeEvery.
	ProbeEvery time.Duration
	// QuotaEvery is how often the leader asks WeChat's quota/get how many
	// calls to the paths that issue each app's credentials were made today,
	// to see another party's (quota.go), spread over the interval; 0 asks
	// nothing. serve's --quota-every is DefaultQuotaEvery.
	QuotaEvery time.Duration
	// QuotaRescueOff turns off the rescue of a spent daily quota (see the
	// README, "A spent quota, rescued"); serve's --quota-rescue is on.
	QuotaRescueOff bool
	// QuotaClearReserve is the account's quota resets a month (of 10) the
	// rescue leaves to people in WeChat's console; 0 leaves none. serve's
	// --quota-clear-reserve is DefaultQuotaClearReserve.
	QuotaClearReserve int

	// Registerer, if set, receives the refresher's Prometheus metrics.
	Registerer prometheus.Registerer

	// Instance names this replica in the lease and in logs; hostname and pid
	// by default.
	Instance string
	// Logger receives the refresher's logs; nothing is logged when nil.
	Logger *slog.Logger
	// Clock is the time the refresher decides and schedules by; the real
	// clock by default. (Leases always run on real time.)
	Clock Clock
}

// Refresher keeps the tokens of its apps fresh in the token bucket.
type Refresher struct {
	cfg       Config
	nc        *nats.Conn
	js        jetstream.JetStream
	log       *slog.Logger
	creds     *loop.Credentials // the loop
	platforms *platform.Platforms
	apps      *reloader // makes the loop's credentials of the apps
	keeper    *secretKeeper
	metrics   *metrics
	logins    *loginServer
	start     startup
	probes    *probes                            // could this replica lead? (probes.go)
	peers     *lease.Peers                       // the replicas' states; nil without them (standing.go)
	seen      *seen                              // the ledgers and failures the status page shows (page.go)
	lease     atomic.Pointer[lease.Lease]        // for the page: who holds it
	tokens    atomic.Pointer[jetstream.KeyValue] // for the page: the apps' ledgers
	// shownPeers is peers, for the page, which runs on other goroutines.
	shownPeers atomic.Pointer[lease.Peers]
	quota      *quotaPoller // nil when Config.QuotaEvery is 0
	rids       *ridLookups  // the rids of WeChat's refusals, looked up (rid.go)

	campaigning atomic.Bool // Run is past start-up, leading or standing by
}

// New checks cfg and returns a refresher that uses nc. Run starts it.
func New(nc *nats.Conn, cfg Config) (*Refresher, error) {
	cfg, schedule, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// Asynchronous writes (a repair carrying values over) give up on an
	// acknowledgement that does not come, rather than wait forever.
	js, err := jetStreamOf(nc, cfg.JSDomain, jetstream.WithPublishAsyncTimeout(bucket.Timeout), jetstream.WithDefaultTimeout(requestTimeout))
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	wechat, err := upstream.New(cfg.UpstreamURL, cfg.upstreamHTTPClient(), cfg.UpstreamTimeout,
		upstream.WithFailover("WeChat", cfg.UpstreamRecheck, cfg.Logger))
	if err != nil {
		return nil, err
	}
	// WeCom has one API domain, qyapi.weixin.qq.com: its client never
	// moves, and has no health of its own in the metrics.
	wecom, err := upstream.New(cfg.WeComURL, cfg.upstreamHTTPClient(), cfg.UpstreamTimeout)
	if err != nil {
		return nil, fmt.Errorf("publisher: WeCom: %w", err)
	}
	r := &Refresher{cfg: cfg, nc: nc, js: js, log: cfg.Logger, start: startup{nc: nc, log: cfg.Logger},
		apps: &reloader{wechat: wechat, wecom: wecom, limits: &source.HourlyLimits{}, log: cfg.Logger,
			rescue: source.RescuePolicy{Off: cfg.QuotaRescueOff, Reserve: cfg.QuotaClearReserve}}}
	r.metrics = newMetrics(cfg.Registerer, r)
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(wechat.Bases().Collector("wxtoken_upstream"))
	}
	r.logins = newLoginServer(r)
	r.probes = newProbes(cfg, r.apps)
	r.probes.onChange = r.logins.standingChanged
	if cfg.QuotaEvery > 0 {
		r.quota = newQuotaPoller(r, cfg.QuotaEvery)
	}
	subjects := kv.Subjects{Prefix: cfg.SubjectPrefix}
	r.rids = newRidLookups(cfg.Registerer, wechat, cfg, r.Leading)
	r.creds = loop.New(loop.Config{
		Conn: nc, JS: js, Bucket: bucket.Config{Name: cfg.Bucket, Replicas: cfg.Replicas, History: cfg.History, Subjects: subjects},
		Schedule: schedule, ScheduleSpec: cfg.Schedule,
		RefreshBefore: cfg.RefreshBefore, MinForceInterval: cfg.MinForceInterval, UpstreamTimeout: cfg.UpstreamTimeout,
		RetryBackoff: cfg.RetryBackoff, RetryBackoffMax: cfg.RetryBackoffMax, ConfigErrorBackoff: cfg.ConfigErrorBackoff,
		Pacer: upstream.NewPacer(cfg.UpstreamRate), Instance: cfg.Instance, Version: Version,
		Now: cfg.Clock.now, AfterFunc: cfg.Clock.afterFunc, Logger: cfg.Logger, Metrics: r.metrics, Scrubber: r.apps.secrets.scrubber,
		Duty:          r.quota.duty(),
		FailureDetail: r.rids.detail,
	})
	r.rids.creds = r.creds
	r.platforms = platform.New(js, platform.Config{
		Bucket: cfg.PlatformBucket, Replicas: cfg.Replicas, History: cfg.History, Now: cfg.Clock.now, Logger: cfg.Logger,
		OnTicket:      r.apps.ticketPushed,
		OnAuthorizers: r.apps.rebuild,
		OnRecord:      r.creds.Renew,
		OnWithdrawn:   func(appid string) { r.creds.Remove(appid, source.Withdrawal(appid, r.log)) },
	})
	r.apps.creds, r.apps.platforms = r.creds, r.platforms
	r.seen = newSeen(r.scrubShown)
	r.keeper = &secretKeeper{r: r, held: map[string]held{}}
	if _, err := r.apps.reload(cfg.Apps, ""); err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return r, nil
}

// Run runs the refresher until ctx ends. It waits for NATS, opens the
// buckets (retrying what may pass by itself, such as a cluster still
// forming; see Ready), and follows the token bucket for its whole life
// (standbys too, so that their metrics are live and a takeover starts from
// a complete view), then campaigns for the lease: as leader it refreshes
// and serves refresh requests, as standby it waits to take over. It
// returns nil after a clean stop, which releases the lease so that a
// standby takes over at once.
func (r *Refresher) Run(ctx context.Context) error {
	stopSecrets, err := r.serveSecrets()
	if err != nil {
		return err
	}
	defer stopSecrets()
	defer r.startProbes(ctx)()
	defer r.rids.run(ctx)()
	defer r.followFailures()()
	tokens, l, err := r.open(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: a clean stop
		}
		return err
	}
	r.lease.Store(l)
	r.tokens.Store(&tokens)
	followCtx, stopFollowing := context.WithCancel(ctx)
	var following sync.WaitGroup
	defer func() {
		stopFollowing()
		following.Wait()
		r.apps.background.Wait()
	}()
	if !r.follow(followCtx, tokens, &following) {
		return nil // ctx ended
	}
	stopLogins, err := r.logins.serve()
	if err != nil {
		return fmt.Errorf("publisher: answering logins: %w", err)
	}
	defer stopLogins()
	stopListening, err := r.listenForUsage()
	if err != nil {
		return fmt.Errorf("publisher: listening for the agents' usage: %w", err)
	}
	defer stopListening()
	r.standBy(followCtx, l, &following)

	r.campaigning.Store(true)
	defer r.campaigning.Store(false)
	r.probes.publishNow() // standing: a worse replica may defer now
	for {
		held, err := r.campaign(ctx, l, tokens)
		if err != nil {
			return nil // ctx ended
		}
		term, endTerm := r.whileBest(ctx)
		err = r.lead(term, tokens, held)
		endTerm()
		held.Release()
		if err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// follow starts what every replica runs for its whole life: the followers
// of the platform bucket and of the token bucket, the looks at the token
// bucket, and the first tending of the platforms. It returns once both
// buckets have been read; false if ctx ended first.
func (r *Refresher) follow(ctx context.Context, tokens jetstream.KeyValue, following *sync.WaitGroup) bool {
	// The authorizers are known before the token bucket is read, so that
	// the follower takes in their tokens with everyone else's.
	platformsFollowed := make(chan struct{})
	following.Go(func() { <-platformsFollowed })
	if !r.platforms.Follow(ctx, r.nc, platformsFollowed) {
		return false
	}
	following.Go(func() { r.platforms.Tend(ctx) })
	synced := r.creds.NextSync()
	follower := &kvwatch.Follower{
		Bucket:   tokens,
		Key:      ">",
		Conn:     r.nc,
		OnEntry:  func(e jetstream.KeyValueEntry) { r.creds.Observe(e); r.seen.observe(e) },
		OnSynced: r.creds.FollowerSynced,
		OnError:  func(err error) { r.log.Warn("token bucket watch interrupted, resuming", "error", err) },
		Rewatch:  r.creds.Rewatch(),
	}
	following.Go(func() { follower.Run(ctx) })
	following.Go(func() { r.creds.WatchBucket(ctx) })
	select {
	case <-synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// campaign waits until this replica holds the lease. Meanwhile it stores
// what the last term left only in memory (see loop.StoreLeftovers); once
// it leads, its rotations do.
func (r *Refresher) campaign(ctx context.Context, l *lease.Lease, tokens jetstream.KeyValue) (*lease.Held, error) {
	storing, stopStoring := context.WithCancel(ctx)
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		r.creds.StoreLeftovers(storing, tokens)
	}()
	defer func() {
		stopStoring()
		<-stored
	}()
	return r.acquire(ctx, l)
}

// lead leads for one term, while held lasts: the loop's duties, then the
// platforms' refresh tokens, which a lost lease or a shutdown must not
// leave only in memory.
func (r *Refresher) lead(ctx context.Context, tokens jetstream.KeyValue, held loop.Leadership) error {
	r.setLeading(true)
	r.log.Info("became leader", "instance", r.cfg.Instance)
	led := make(chan struct{})
	go func() {
		select {
		case <-held.Lost(): // from here on this replica may not call WeChat
			r.setLeading(false)
		case <-led:
		}
	}()
	err := r.creds.Lead(ctx, tokens, held)
	close(led)
	r.setLeading(false)
	r.platforms.Flush()
	return err
}

// setLeading records whether this replica leads, and has the login server
// look again whether to answer logins (loginqueue.go).
func (r *Refresher) setLeading(leading bool) {
	r.metrics.setLeading(leading)
	r.logins.standingChanged()
}

// Leading reports whether this replica currently leads: whether it may
// call WeChat.
func (r *Refresher) Leading() bool { return r.metrics.leading.Load() }

// Ready says why the refresher cannot do its part yet, or nil: it is
// connected to NATS, has opened and read the token bucket, and leads or
// stands by. While start-up retries, it says what failed last.
func (r *Refresher) Ready() error {
	if st := r.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("publisher: NATS connection is %s", st)
	}
	if err := r.start.err(); err != nil {
		return err
	}
	if err := r.creds.Problem(); err != nil {
		return err
	}
	switch {
	case !r.creds.Synced():
		return errors.New("publisher: the token bucket has not been read yet")
	case !r.campaigning.Load():
		return errors.New("publisher: not running")
	}
	return r.probes.problem(r.Leading())
}

// Callback returns the handler of the platforms' authorization-event URL,
// for any replica: the pushes it takes in are stored in the platform
// bucket, where the leader finds them. It answers 503 until the bucket is
// open, to a push and to a GET, a load balancer's health check.
func (r *Refresher) Callback() http.Handler { return r.platforms.Handler() }
