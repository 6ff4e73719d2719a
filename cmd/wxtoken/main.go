// Command wxtoken is the central WeChat access_token server (serve) and the
// tools to look at it (get, watch, refresh, status, sign, version).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

const overview = `wxtoken keeps WeChat access_tokens, and the JS-SDK tickets fetched with them,
fresh in a NATS JetStream KV bucket: one central refresher fetches each before
it expires, and every service reads it from the bucket instead of fetching its
own. A KEY is an appid (its access_token), APPID.jsapi_ticket or
APPID.wx_card_ticket; for a WeCom (企业微信) app, CORPID-AGENT (its token),
CORPID-AGENT.jsapi_ticket or CORPID-AGENT.agent_config_ticket.

Usage:
  wxtoken serve [flags]             run the refresher (with an embedded NATS unless --nats-url)
  wxtoken get KEY                   print a key's current value, for scripts
  wxtoken watch [KEY]               print rotations and failures as they happen
  wxtoken refresh KEY [--force]     ask the refresher for a new value
  wxtoken status                    show every token and ticket in the bucket
  wxtoken sign KEY URL              print a page's signed wx.config as JSON
  wxtoken agent [flags]             serve the keys over local HTTP, for services with no NATS
                                    client and for WeChat SDKs (their base URL)
  wxtoken authorizers import|list   import third-party platforms' authorizers, or list them
  wxtoken region add                create a region's copy of the token bucket, against its NATS
  wxtoken secret set KEY < FILE     give every replica a new AppSecret without a restart (checked
                                    with WeChat first; never on the command line)
  wxtoken demo reject APPID         make the fake WeChat of "serve --demo" reject a token
  wxtoken version                   print the version (also --version)

Run "wxtoken COMMAND --help" for a command's flags and examples.
`

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, overview)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args[0] = "version"
	}
	commands := map[string]func([]string, func(string) string, io.Writer, io.Writer) error{
		"serve":       serve,
		"get":         get,
		"watch":       watch,
		"refresh":     refresh,
		"status":      status,
		"sign":        sign,
		"agent":       agentCommand,
		"authorizers": authorizers,
		"region":      regionCommand,
		"demo":        demoCommand,
		"secret":      secretCommand,
		"version":     versionCommand,
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "wxtoken: unknown command %q (see wxtoken --help)\n", args[0])
		return 2
	}
	err := cmd(args[1:], getenv, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "wxtoken %s: %v\n", args[0], err)
		return 2
	}
	fmt.Fprintf(stderr, "wxtoken %s: %v\n", args[0], err)
	return 1
}

// usageError is a command line that cannot run; the exit status is 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// parseOrHelp parses a command's arguments and prints its help on --help.
func parseOrHelp(c *command, args []string, getenv func(string) string, stdout io.Writer) ([]string, error) {
	rest, err := c.parse(args, getenv)
	if errors.Is(err, errHelp) {
		c.usage(stdout)
	}
	if err != nil && !errors.Is(err, errHelp) {
		return nil, usageError{err.Error()}
	}
	return rest, err
}

// natsFlags are the connection flags every command shares.
type natsFlags struct {
	url      string
	user     string
	password string
	creds    string
	inbox    string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	bucket   string
	prefix   string
}

// What a command takes besides the connection flags.
const (
	withBucket  = 1 << iota // --bucket
	withSubject             // --subject-prefix
)

func (n *natsFlags) register(c *command, urlUsage string, with int) {
	c.String(&n.url, "nats-url", "NATS_URL", "", urlUsage)
	c.String(&n.user, "nats-user", "NATS_USER", "", "NATS user name")
	c.String(&n.password, "nats-password", "NATS_PASSWORD", "", "NATS password (prefer the environment variable to the flag)")
	c.String(&n.creds, "nats-creds", "NATS_CREDS", "", "NATS credentials `file` (JWT and NKey seed)")
	c.String(&n.inbox, "inbox-prefix", "NATS_INBOX_PREFIX", "", "`prefix` of reply subjects (default _INBOX_<user> with --nats-user, as nats.conf\nexpects, else _INBOX)")
	c.String(&n.tlsCA, "tls-ca", "NATS_TLS_CA", "", "CA certificate `file` to verify the NATS server")
	c.String(&n.tlsCert, "tls-cert", "NATS_TLS_CERT", "", "client certificate `file` for TLS")
	c.String(&n.tlsKey, "tls-key", "NATS_TLS_KEY", "", "client key `file` for TLS")
	n.bucket, n.prefix = kv.DefaultBucket, kv.DefaultSubjectPrefix
	if with&withBucket != 0 {
		c.String(&n.bucket, "bucket", "WXTOKEN_BUCKET", kv.DefaultBucket, "name of the token KV bucket")
	}
	if with&withSubject != 0 {
		c.String(&n.prefix, "subject-prefix", "WXTOKEN_SUBJECT_PREFIX", kv.DefaultSubjectPrefix, "prefix of the value, rotated, failed and refresh subjects")
	}
}

func (n *natsFlags) check() error {
	if err := checkNATSURLs(n.url); err != nil {
		return usageError{err.Error()}
	}
	if (n.tlsCert == "") != (n.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	if n.password != "" && n.user == "" {
		return usagef("--nats-password needs --nats-user")
	}
	if n.creds != "" && n.user != "" {
		return usagef("give --nats-creds or --nats-user, not both")
	}
	if err := kv.ValidateSubjectPrefix(n.prefix); err != nil {
		return usageError{err.Error()}
	}
	return nil
}

// options returns the nats.Options for the flags.
func (n *natsFlags) options(name string) []nats.Option {
	opts := []nats.Option{nats.Name(name)}
	if n.user != "" {
		opts = append(opts, nats.UserInfo(n.user, n.password))
	}
	// Each user's replies come to its own inbox prefix, which only it may
	// subscribe to: one user cannot read another's replies.
	switch {
	case n.inbox != "":
		opts = append(opts, nats.CustomInboxPrefix(n.inbox))
	case n.user != "":
		opts = append(opts, nats.CustomInboxPrefix("_INBOX_"+n.user))
	}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.tlsCA != "" {
		opts = append(opts, nats.RootCAs(n.tlsCA))
	}
	if n.tlsCert != "" {
		opts = append(opts, nats.ClientCert(n.tlsCert, n.tlsKey))
	}
	return opts
}

// longLived returns the options of a connection that never gives up on its
// NATS (serve's and the agent's): every problem goes to the log, and closed
// is told when the connection closes for good.
func (n *natsFlags) longLived(name string, log *slog.Logger, closed func(error)) []nats.Option {
	return append(n.options(name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		// Asynchronous errors (a refused subscription, say) go to the log
		// like everything else, not raw to stderr.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("NATS error", "subject", sub.Subject, "error", err)
				return
			}
			log.Warn("NATS error", "error", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			closed(fmt.Errorf("the NATS connection closed: %v", nc.LastError()))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close at shutdown
				log.Warn("NATS disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted())
		}),
	)
}

// dialForever connects to --nats-url with opts. A NATS server that is not
// up yet is waited for, not a reason to exit: under a supervisor that would
// become a crash loop. The log says when it is up, at once or later.
func (n *natsFlags) dialForever(opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
	unreachable := throttledWarning(log, natsLogEvery, "cannot reach NATS; retrying")
	nc, err := nats.Connect(n.url, append(opts,
		nats.RetryOnFailedConnect(true),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) { unreachable("url", n.redactedURLs(), "error", err) }),
		nats.ConnectHandler(func(nc *nats.Conn) { log.Info("connected to NATS", "server", nc.ConnectedUrlRedacted()) }),
	)...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", n.redactedURLs(), err)
	}
	return nc, nil
}

// client is a client command's connection. A request the server refuses
// for lack of permission gets no answer at all; the refusal comes back
// apart, as an asynchronous error. client catches it so that the command
// says "permission denied" at once instead of timing out.
type client struct {
	*nats.Conn
	denied chan error
	closed chan struct{} // closed when the connection is lost for good
}

// connect connects a client command: it fails fast, with one clear line,
// when no NATS server answers.
func (n *natsFlags) connect(name string) (*client, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	servers := n.url
	if servers == "" {
		servers = nats.DefaultURL
	}
	c := &client{denied: make(chan error, 16), closed: make(chan struct{})}
	onClosed := nats.ClosedHandler(func(*nats.Conn) { close(c.closed) })
	// Errors reach the user through the command's own message; nats.go's
	// default handler would also print asynchronous ones to stderr.
	onError := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case c.denied <- err:
			default:
			}
		}
	})
	opts := append(n.options(name), nats.Timeout(5*time.Second), nats.MaxReconnects(0), onError, onClosed)
	nc, err := nats.Connect(servers, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", cmp.Or(n.redactedURLs(), servers), err)
	}
	c.Conn = nc
	return c, nil
}

// do runs op, ending it early when the server refuses one of its messages.
func (c *client) do(ctx context.Context, op func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- op(ctx) }()
	select {
	case err := <-done:
		return err
	case err := <-c.denied:
		cancel()
		<-done
		return fmt.Errorf("permission denied: %w", err)
	}
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// newLogger returns the serve command's logger.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: use text or json", format)
}
