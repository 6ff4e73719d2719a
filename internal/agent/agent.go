// Package agent is `wxtoken agent`: a process beside services that cannot
// hold a NATS connection (PHP-FPM, cron jobs, shell scripts). It follows
// the keys of the token bucket on one subscriber.Set (one subscription, a
// few hundred bytes per key), keeps them in memory, and answers over local
// HTTP: its own small JSON API, WeChat's own token and ticket paths from
// memory, and every other WeChat API call forwarded with the current token
// put in. A service, or an SDK pointed at the agent by its base URL, then
// never fetches a token itself.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/failover"
	"github.com/wxtoken/wxtoken/kv"
)

// Config is what an Agent serves and how. Zero fields take the defaults
// noted.
type Config struct {
	Conn *nats.Conn // the agent's NATS connection; required
	// Keys are the credentials served. None: every key in the bucket,
	// and each new one as the refresher announces it.
	Keys          []string
	Bucket        string // kv.DefaultBucket
	SubjectPrefix string // kv.DefaultSubjectPrefix

	WeChatBase *url.URL // where API calls are forwarded; required
	// WeChatFallbacks are WeChat's further bases, in order
	// (api2.weixin.qq.com): two failures in a row on one (no answer, HTTP
	// 5xx, errcode -1) move calls to the next, and one call tries
	// WeChatBase again WeChatRecheck later (failover.DefaultRecheck).
	WeChatFallbacks []*url.URL
	WeChatRecheck   time.Duration
	WeComBase       *url.URL // the same for WeCom keys, which have one base; required

	Clients []Client // who may call, and which keys each may use; none: anyone, every key

	MaxRetryBody    int64         // a body up to this is buffered, so a rejected call can be retried; 1 MiB
	MaxBody         int64         // a larger body is refused; 32 MiB
	UpstreamTimeout time.Duration // one call to WeChat, answer included; 30s
	RefreshTimeout  time.Duration // waiting for the refresher to replace a token; 15s
	MaxWait         time.Duration // the longest long poll; 60s
	BodyTimeout     time.Duration // a request's body must arrive within this; 60s

	// UsageEvery is how often the agent publishes its usage report (the
	// proxy's calls per app and API path, the rids seen) on
	// kv.Subjects.Usage, when anything changed; 0: never.
	UsageEvery time.Duration

	Logger *slog.Logger // silent by default
	// Registry gets the agent's metrics, and /metrics serves all it
	// has; none: a registry of the agent's own.
	Registry *prometheus.Registry
}

const (
	defaultMaxRetryBody    = 1 << 20
	defaultMaxBody         = 32 << 20
	defaultUpstreamTimeout = 30 * time.Second
	defaultRefreshTimeout  = 15 * time.Second
	defaultMaxWait         = 60 * time.Second
	defaultBodyTimeout     = 60 * time.Second
	// A key of Keys not held after this is warned about: time enough to
	// read every key that is in the bucket, and for a refresher starting
	// beside the agent to store its first values.
	defaultMissingKeyWait = 5 * time.Second
)

// Agent serves the credentials it follows over HTTP.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	keys     *keySet
	clients  atomic.Pointer[clientSet] // nil: anyone may use every key
	upstream *http.Client
	wechat   *failover.Bases // where WeChat calls go
	wecom    *failover.Bases // WeCom's one base
	metrics  *metrics
	usage    *usage // the proxy's calls, for the usage report (usage.go)
	name     string // the agent's instance name in its reports
	reports  sync.WaitGroup

	secretWarnings secretWarnings // when each client was last warned of a secret (secrets.go)

	ctx      context.Context // ends with Close
	cancel   context.CancelFunc
	running  sync.Once
	draining chan struct{} // closed by Drain: long polls answer at once

	// missingKeyWait is how long a key of Keys may take to be held before
	// the agent warns that the bucket does not have it.
	missingKeyWait time.Duration
}

// New checks cfg and returns an agent that has not started following its
// keys: Run does.
func New(cfg Config) (*Agent, error) {
	if cfg.Conn == nil {
		return nil, errors.New("agent: no NATS connection")
	}
	for _, key := range cfg.Keys {
		if err := kv.ValidateKey(key); err != nil {
			return nil, fmt.Errorf("agent: --keys: %w", err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Bucket = cmp.Or(cfg.Bucket, kv.DefaultBucket)
	cfg.SubjectPrefix = cmp.Or(cfg.SubjectPrefix, kv.DefaultSubjectPrefix)
	if err := kv.ValidateBucketName(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := kv.ValidateSubjectPrefix(cfg.SubjectPrefix); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	for name, base := range map[string]*url.URL{"WeChat": cfg.WeChatBase, "WeCom": cfg.WeComBase} {
		if base == nil {
			return nil, fmt.Errorf("agent: no %s base URL", name)
		}
	}
	wechat, err := failover.New(failover.Config{URLs: append([]*url.URL{cfg.WeChatBase}, cfg.WeChatFallbacks...),
		Recheck: cfg.WeChatRecheck, API: "WeChat", Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("agent: the WeChat base URLs: %w", err)
	}
	wecom, err := failover.New(failover.Config{URLs: []*url.URL{cfg.WeComBase}, API: "WeCom", Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("agent: the WeCom base URL: %w", err)
	}
	for _, d := range []time.Duration{cfg.UpstreamTimeout, cfg.RefreshTimeout, cfg.MaxWait, cfg.BodyTimeout} {
		if d < 0 {
			return nil, fmt.Errorf("agent: a negative timeout, %s", d)
		}
	}
	if cfg.UsageEvery < 0 {
		return nil, fmt.Errorf("agent: a negative usage report interval, %s (0 sends none)", cfg.UsageEvery)
	}
	if cfg.MaxRetryBody < 0 || cfg.MaxBody < 0 {
		return nil, errors.New("agent: a negative body limit")
	}
	cfg.MaxRetryBody = cmp.Or(cfg.MaxRetryBody, defaultMaxRetryBody)
	cfg.MaxBody = cmp.Or(cfg.MaxBody, defaultMaxBody)
	if cfg.MaxRetryBody > cfg.MaxBody {
		return nil, fmt.Errorf("agent: the retried body limit (%d) is over the body limit (%d)", cfg.MaxRetryBody, cfg.MaxBody)
	}
	cfg.UpstreamTimeout = cmp.Or(cfg.UpstreamTimeout, defaultUpstreamTimeout)
	cfg.RefreshTimeout = cmp.Or(cfg.RefreshTimeout, defaultRefreshTimeout)
	cfg.MaxWait = cmp.Or(cfg.MaxWait, defaultMaxWait)
	cfg.BodyTimeout = cmp.Or(cfg.BodyTimeout, defaultBodyTimeout)
	clients, err := newClientSet(cfg.Clients)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger,
		upstream: newUpstreamClient(),
		wechat:   wechat,
		wecom:    wecom,
		metrics:  newMetrics(cfg.Registry, wechat),
		usage:    newUsage(),
		name:     instanceName(),
		ctx:      ctx,
		cancel:   cancel,
		draining: make(chan struct{}),

		missingKeyWait: defaultMissingKeyWait,
	}
	a.clients.Store(clients)
	a.keys = newKeySet(a)
	return a, nil
}

// Run follows the keys until Close. It returns at once; a second call does
// nothing.
func (a *Agent) Run() {
	a.running.Do(func() {
		a.keys.start(a.ctx)
		if a.cfg.UsageEvery > 0 {
			a.reports.Go(func() { a.reportUsage(a.ctx) })
		}
	})
}

// Ready says why the agent cannot serve every key yet, or nil once it
// holds a value of each.
func (a *Agent) Ready() error { return a.keys.ready() }

// SetClients replaces the clients of an agent that has some (the auth file
// read again): requests from now on are checked against them. It refuses
// clients it cannot use, and none at all: an agent guarded by an auth
// file stays guarded.
func (a *Agent) SetClients(clients []Client) error {
	if a.clients.Load() == nil {
		return errors.New("agent: no clients to replace (the agent started without an auth file)")
	}
	cs, err := newClientSet(clients)
	if err != nil {
		return err
	}
	if cs == nil {
		return errors.New("agent: no clients")
	}
	a.clients.Store(cs)
	return nil
}

// Drain makes long polls under way answer now, before a shutdown.
func (a *Agent) Drain() {
	select {
	case <-a.draining:
	default:
		close(a.draining)
	}
}

// Close stops following the keys. It is idempotent.
func (a *Agent) Close() error {
	a.Drain()
	a.cancel()
	a.reports.Wait()
	a.keys.close()
	a.upstream.CloseIdleConnections()
	return nil
}
