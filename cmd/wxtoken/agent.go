package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/agent"
	"github.com/wxtoken/wxtoken/internal/failover"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

const agentSummary = `Serve the tokens and tickets of the bucket over local HTTP, for services
that hold no NATS connection (PHP-FPM, cron jobs, shell scripts) and for
WeChat SDKs pointed at the agent by their API base URL. It follows the keys
over NATS (as the "agent" user of nats.conf) and keeps them in memory.
It answers:
  GET  /v1/credentials/KEY           the value, revision, expires_at (ETag, long poll ?wait=, text/plain)
  POST /v1/credentials/KEY/refresh   {"stale_revision":N}: replace a value WeChat rejected
  GET  /v1/jssdk/APPID/config?url=   a signed wx.config, the page URL url-encoded (and
                                     /agent-config for WeCom)
  GET  /cgi-bin/token, POST /cgi-bin/stable_token, GET /cgi-bin/ticket/getticket,
  GET  /cgi-bin/gettoken (WeCom)     WeChat's own token paths, from memory
  GET  /sns/jscode2session, /sns/oauth2/access_token, /sns/oauth2/refresh_token
       (and /sns/component/..., /sns/oauth2/component/...)
                                     login codes exchanged by the refresher, which puts
                                     the secret in; a request carrying one is refused
  anything else                      forwarded to WeChat with the current access_token put in,
                                     and retried once with a new one if WeChat rejects it
  /app/KEY/...                       the same, for one app: an SDK's base URL
  /healthz, /readyz, /metrics
Only loopback or a unix socket, unless --auth-file and TLS (or --insecure-listen).
SIGHUP reads --auth-file again; SIGTERM drains and exits.`

const agentExamples = `  # Beside a PHP-FPM pool, every key the service user may read
  wxtoken agent --nats-url nats://nats:4222 --nats-user service
  curl -s http://127.0.0.1:8180/v1/credentials/wx1234567890abcdef
  curl -s -H 'Accept: text/plain' http://127.0.0.1:8180/v1/credentials/wx1234567890abcdef

  # An SDK's base URL: http://127.0.0.1:8180/app/wx1234567890abcdef
  curl -s 'http://127.0.0.1:8180/app/wx1234567890abcdef/cgi-bin/user/get'

  # A unix socket, two keys
  wxtoken agent --listen unix:/run/wxtoken/agent.sock --keys wx1234567890abcdef,wx1234567890abcdef.jsapi_ticket
  curl -s --unix-socket /run/wxtoken/agent.sock http://agent/v1/credentials/wx1234567890abcdef

  # "wxtoken serve --demo" runs an agent of its own on 127.0.0.1:8180; another one
  # beside it forwards to the demo's fake WeChat
  wxtoken agent --listen 127.0.0.1:8182 --wechat-base-url http://127.0.0.1:8181`

type agentFlags struct {
	nats      natsFlags
	keys      string
	listen    string
	wechat    string
	wecom     string
	authFile  string
	tlsCert   string
	tlsKey    string
	insecure  bool
	cfg       agent.Config
	logFormat string
	logLevel  string
}

func agentCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var f agentFlags
	c := newCommand("agent", "", agentSummary, agentExamples)
	f.nats.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket|withSubject)
	c.String(&f.keys, "keys", "WXTOKEN_AGENT_KEYS", "", "comma-separated `keys` to serve (default every key in the bucket, and new ones as\nthey appear)")
	c.String(&f.listen, "listen", "WXTOKEN_AGENT_LISTEN", "127.0.0.1:8180", "`address` to serve on: host:port, or unix:/path/agent.sock (mode 0660)")
	c.String(&f.wechat, "wechat-base-url", "WECHAT_BASE_URL", publisher.DefaultUpstreamURL,
		"WeChat API base `URLs` that calls are forwarded to, comma-separated, in order: two\nfailures in a row on one (no answer, HTTP 5xx, errcode -1) move calls to the next")
	c.Duration(&f.cfg.WeChatRecheck, "wechat-base-recheck", "WECHAT_BASE_RECHECK", publisher.DefaultUpstreamRecheck,
		"after this long on a later --wechat-base-url, one call tries the first again")
	c.String(&f.wecom, "wecom-base-url", "WECOM_BASE_URL", publisher.DefaultWeComURL, "WeCom (企业微信) API base `URL`, for WeCom keys")
	c.String(&f.authFile, "auth-file", "WXTOKEN_AGENT_AUTH_FILE", "", "YAML `file` of clients: bearer tokens and the keys each may use")
	c.String(&f.tlsCert, "listen-tls-cert", "WXTOKEN_AGENT_TLS_CERT", "", "certificate `file` to serve HTTPS with")
	c.String(&f.tlsKey, "listen-tls-key", "WXTOKEN_AGENT_TLS_KEY", "", "key `file` of --listen-tls-cert")
	// No variable, on purpose: opening the agent to the network is said on
	// its command line, where ps and the unit file show it.
	c.Bool(&f.insecure, "insecure-listen", "", false, "allow a non-loopback --listen without --auth-file and TLS (no variable, on\npurpose: it must show on the command line)")
	c.Size(&f.cfg.MaxRetryBody, "max-retry-body", "WXTOKEN_AGENT_MAX_RETRY_BODY", 1<<20, "largest request body kept to retry the call with a new token (bytes, or with\nKiB, MiB or GiB); longer bodies (media uploads) stream through and are not\nretried")
	c.Size(&f.cfg.MaxBody, "max-body", "WXTOKEN_AGENT_MAX_BODY", 32<<20, "largest request body (bytes, or with KiB, MiB or GiB)")
	c.Duration(&f.cfg.UpstreamTimeout, "upstream-timeout", "WXTOKEN_AGENT_UPSTREAM_TIMEOUT", 30*time.Second,
		"bound of one forwarded call to WeChat, its answer included (not serve's\n--upstream-timeout, which bounds a token fetch)")
	c.Duration(&f.cfg.RefreshTimeout, "refresh-timeout", "WXTOKEN_AGENT_REFRESH_TIMEOUT", 15*time.Second, "bound of the wait for the refresher's new value")
	c.Duration(&f.cfg.MaxWait, "max-wait", "WXTOKEN_AGENT_MAX_WAIT", 60*time.Second, "longest long poll (?wait=)")
	c.Duration(&f.cfg.BodyTimeout, "body-timeout", "WXTOKEN_AGENT_BODY_TIMEOUT", 60*time.Second, "a request body must arrive within this")
	c.Duration(&f.cfg.UsageEvery, "usage-every", "WXTOKEN_AGENT_USAGE_EVERY", time.Minute,
		"how often the agent publishes its proxy's calls per app and API path, and the\nrids of rejected calls, on <prefix>.usage for the refresher, when any changed;\n0: never")
	c.String(&f.logFormat, "log-format", "WXTOKEN_LOG_FORMAT", "text", "log format: text or json")
	c.String(&f.logLevel, "log-level", "WXTOKEN_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("no arguments, only flags (see wxtoken agent --help)")
	}
	if err := f.configure(); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return usagef("--listen-tls-cert: %v", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if f.authFile != "" {
		if f.cfg.Clients, err = agent.LoadClients(f.authFile); err != nil {
			return usageError{err.Error()}
		}
	}
	// The listener first: a port in use is an error at once, not after
	// NATS is reached.
	ln, err := agent.Listen(f.listen, agent.ListenOptions{TLS: tlsConfig, Auth: f.cfg.Clients != nil, Insecure: f.insecure})
	if err != nil {
		return usageError{err.Error()}
	}
	defer ln.Close()

	ctx, stop := signalContext()
	defer stop()
	lost := make(chan error, 1)
	f.cfg.Conn, err = f.nats.dialForever(f.nats.longLived("wxtoken agent", log, func(err error) {
		select {
		case lost <- err:
		default:
		}
	}), log)
	if err != nil {
		return err
	}
	defer f.cfg.Conn.Close()
	reg := newRegistry()
	f.cfg.Registry, f.cfg.Logger = reg, log
	a, err := agent.New(f.cfg)
	if err != nil {
		return usageError{err.Error()}
	}
	a.Run()
	defer a.Close()
	srv := a.Server()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("agent listening", "addr", ln.Addr().String(), "keys", cmp.Or(f.keys, "every key in the bucket"),
		"auth", f.cfg.Clients != nil, "tls", tlsConfig != nil)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Until SIGTERM: SIGHUP reads the auth file again.
	stopped := func() error {
		for {
			select {
			case <-hup:
				f.reloadClients(a, log)
			case <-ctx.Done():
				log.Info("stopping: draining requests")
				return nil
			case err := <-lost:
				// Not a clean stop: the exit status says so, and a
				// supervisor starts the agent again.
				srv.Close()
				return err
			case err := <-served:
				return fmt.Errorf("serving HTTP: %w", err)
			}
		}
	}
	if err := stopped(); err != nil {
		return err
	}
	// Long polls answer now; a proxied call may take two calls to WeChat
	// and a refresh between them.
	a.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), 2*f.cfg.UpstreamTimeout+f.cfg.RefreshTimeout+5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		srv.Close()
		return fmt.Errorf("requests still under way when the drain ran out: %w", err)
	}
	log.Info("stopped")
	return nil
}

// reloadClients reads the auth file again on SIGHUP, and keeps the clients
// it had if the file cannot be used.
func (f *agentFlags) reloadClients(a *agent.Agent, log *slog.Logger) {
	if f.authFile == "" {
		log.Info("SIGHUP: nothing to reload (no --auth-file)")
		return
	}
	clients, err := agent.LoadClients(f.authFile)
	if err == nil {
		err = a.SetClients(clients)
	}
	if err != nil {
		log.Error("SIGHUP: the auth file was not reloaded; the clients before stay", "error", err)
		return
	}
	log.Info("SIGHUP: auth file reloaded", "clients", len(clients))
}

// configure checks the flags and fills in the agent's Config.
func (f *agentFlags) configure() error {
	if err := f.nats.check(); err != nil {
		return err
	}
	for _, key := range strings.Split(f.keys, ",") {
		key = strings.TrimSpace(key)
		if key == "" {
			continue
		}
		if err := kv.ValidateKey(key); err != nil {
			return usagef("--keys: %v", err)
		}
		f.cfg.Keys = append(f.cfg.Keys, key)
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return usagef("--listen-tls-cert and --listen-tls-key go together")
	}
	wechat, err := failover.Parse(f.wechat)
	if err != nil {
		return usagef("--wechat-base-url: %v", err)
	}
	f.cfg.WeChatBase, f.cfg.WeChatFallbacks = wechat[0], wechat[1:]
	wecom, err := failover.Parse(f.wecom)
	if err != nil || len(wecom) != 1 {
		return usagef("--wecom-base-url: give WeCom's one base URL, such as %s", publisher.DefaultWeComURL)
	}
	f.cfg.WeComBase = wecom[0]
	switch {
	case f.cfg.MaxRetryBody <= 0 || f.cfg.MaxBody <= 0:
		return usagef("--max-retry-body and --max-body: a positive number of bytes")
	case f.cfg.MaxRetryBody > f.cfg.MaxBody:
		return usagef("--max-retry-body is over --max-body")
	case f.cfg.UpstreamTimeout <= 0 || f.cfg.RefreshTimeout <= 0 || f.cfg.MaxWait <= 0 || f.cfg.BodyTimeout <= 0:
		return usagef("--upstream-timeout, --refresh-timeout, --max-wait and --body-timeout must be positive")
	case f.cfg.UsageEvery < 0:
		return usagef("--usage-every %s: give a positive duration such as 1m, or 0 for no usage report", f.cfg.UsageEvery)
	case f.cfg.WeChatRecheck <= 0:
		return usagef("--wechat-base-recheck %s: give a positive duration such as 10m", f.cfg.WeChatRecheck)
	}
	f.cfg.Bucket, f.cfg.SubjectPrefix = f.nats.bucket, f.nats.prefix
	return nil
}
