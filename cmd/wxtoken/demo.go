package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/agent"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

// The demo apps' appids, 18 characters like real ones: a classic app with
// a jsapi_ticket, and a stable_token app.
const (
	demoAppID       = "wxdemo0123456789ab"
	demoStableAppID = "wxdemostable012345"
)

// demoSecret is the demo apps' AppSecret at the fake WeChat.
const demoSecret = "demo-secret-not-a-real-one"

// Where the demo's fake WeChat and agent listen by default: fixed ports, so
// that the commands the README and the log give keep working across
// restarts. 8180 is the agent's own default. The demo serves the status
// page and the metrics (--http-addr) on defaultDemoHTTPListen unless told
// otherwise.
const (
	defaultDemoWeChatListen = "127.0.0.1:8181"
	defaultDemoAgentListen  = "127.0.0.1:8180"
	defaultDemoHTTPListen   = "127.0.0.1:8182"
)

// demoMinForceInterval is the demo's --min-force-interval, unless one is
// given: the demo shows a forced refresh that finds the token valid, then,
// after `demo reject`, one that rotates it, seconds apart rather than 30.
const demoMinForceInterval = 5 * time.Second

// demoRejectPath is the fake WeChat's one path of the demo's own: a POST to
// demoRejectPath+APPID makes it reject the app's current token.
const demoRejectPath = "/demo/reject/"

// demoApps are the apps of `serve --demo`.
func demoApps() []publisher.App {
	return []publisher.App{
		{AppID: demoAppID, Secret: publisher.NewSecret(demoSecret), Tickets: []publisher.Ticket{publisher.TicketJSAPI}},
		{AppID: demoStableAppID, Secret: publisher.NewSecret(demoSecret), TokenAPI: publisher.TokenAPIStable},
	}
}

// demo is what `serve --demo` runs beside the refresher: a fake WeChat, and
// an agent that forwards to it, so that the demo's tokens never reach the
// real WeChat.
type demo struct {
	fake       *fakewechat.Server
	wechatURL  string
	stopWeChat func()
	agentLn    net.Listener // nil with --demo-agent-listen off
	pageURL    string       // the status page's
}

// checkDemoListen refuses an address the demo may not listen on: its fake
// WeChat hands out tokens and rejects them on request, and its agent serves
// them without a client token.
func checkDemoListen(flag, addr string) error {
	if flag == "demo-agent-listen" && addr == "off" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("--%s %q: a loopback host:port, such as 127.0.0.1:8181", flag, addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return usagef("--%s %s: the demo listens on loopback only (127.0.0.1)", flag, addr)
	}
	return nil
}

// startDemo starts the fake WeChat and opens the agent's listener; the agent
// itself starts once NATS is connected (startAgent). A port in use is an
// error now, before NATS starts.
func (f *serveFlags) startDemo(log *slog.Logger) (*demo, error) {
	fake := fakewechat.New(fakewechat.Config{ExpiresIn: 60 * time.Second, Overlap: 30 * time.Second,
		StableRenewBefore: 40 * time.Second, TicketExpiresIn: 90 * time.Second})
	fake.AddApp(demoAppID, demoSecret)
	fake.AddApp(demoStableAppID, demoSecret)
	ln, err := net.Listen("tcp", f.demoWeChat)
	if err != nil {
		return nil, demoListenError("the fake WeChat", "demo-wechat-listen", f.demoWeChat, err)
	}
	d := &demo{fake: fake, wechatURL: "http://" + ln.Addr().String()}
	if f.demoAgent != "off" {
		if d.agentLn, err = net.Listen("tcp", f.demoAgent); err != nil {
			ln.Close()
			return nil, demoListenError("the agent", "demo-agent-listen", f.demoAgent, err)
		}
	}
	srv := &http.Server{Handler: demoWeChatHandler(fake, log), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("demo: fake WeChat stopped", "error", err)
		}
	}()
	d.stopWeChat = func() { srv.Shutdown(context.Background()) }
	log.Info("demo: fake WeChat running", "url", d.wechatURL, "token_lifetime", "60s", "ticket_lifetime", "90s",
		"reject_a_token", "go run ./cmd/wxtoken demo reject "+demoAppID+demoListenFlag(f.demoWeChat, defaultDemoWeChatListen))
	return d, nil
}

// demoListenFlag is the --demo-wechat-listen a command needs to find the
// fake: none at the default address.
func demoListenFlag(addr, def string) string {
	if addr == def {
		return ""
	}
	return " --demo-wechat-listen " + addr
}

func demoListenError(what, flag, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("demo: %s cannot listen on %s: it is in use, perhaps by another wxtoken serve --demo or a wxtoken agent; "+
			"give --%s another loopback host:port", what, addr, flag)
	}
	return fmt.Errorf("demo: %s cannot listen on %s (--%s): %w", what, addr, flag, err)
}

// demoWeChatHandler is the fake WeChat with the demo's reject path.
func demoWeChatHandler(fake *fakewechat.Server, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", fake)
	handleDemoLoginCode(mux, fake, log)
	mux.HandleFunc("POST "+demoRejectPath+"{appid}", func(w http.ResponseWriter, r *http.Request) {
		appid := r.PathValue("appid")
		n, err := fake.Reject(appid)
		if err != nil {
			http.Error(w, fmt.Sprintf("the demo has no app %q: its apps are %s and %s", appid, demoAppID, demoStableAppID), http.StatusNotFound)
			return
		}
		log.Info("demo: the fake WeChat now rejects the app's current token", "appid", appid, "tokens", n)
		fmt.Fprintf(w, "%d\n", n)
	})
	return mux
}

// startAgent runs the agent in this process on the listener startDemo
// opened, following every key over nc and forwarding API calls to the fake
// WeChat. It starts once the refresher beside it is ready (ready returns
// nil), so that it finds the bucket the refresher creates instead of
// warning that there is none. The returned func stops it; it must run
// before nc closes.
func (d *demo) startAgent(nc *nats.Conn, ready func() error, log *slog.Logger) (func(), error) {
	if d.agentLn == nil {
		return func() {}, nil
	}
	base, err := url.Parse(d.wechatURL)
	if err != nil {
		return nil, err
	}
	a, err := agent.New(agent.Config{Conn: nc, WeChatBase: base, WeComBase: base, Logger: log.With("component", "agent")})
	if err != nil {
		return nil, err
	}
	srv := a.Server()
	waiting, stopWaiting := context.WithCancel(context.Background())
	started := make(chan bool, 1)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for ready() != nil {
			select {
			case <-waiting.Done():
				started <- false
				return
			case <-tick.C:
			}
		}
		a.Run()
		go srv.Serve(d.agentLn)
		agentURL := "http://" + d.agentLn.Addr().String()
		log.Info("demo: agent listening, forwarding to the fake WeChat", "url", agentURL,
			"try", "curl -s "+agentURL+"/v1/credentials/"+demoAppID, "try_login", demoLoginCommands(d.wechatURL, agentURL))
		started <- true
	}()
	return func() {
		stopWaiting()
		if !<-started {
			return
		}
		a.Drain()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		a.Close()
	}, nil
}

// stop stops the fake WeChat, and closes the agent's listener if the agent
// never started.
func (d *demo) stop() {
	d.stopWeChat()
	if d.agentLn != nil {
		d.agentLn.Close()
	}
}

const demoOverview = `Drive the demo that "wxtoken serve --demo" runs.

Usage:
  wxtoken demo reject APPID    make the demo's fake WeChat reject APPID's current token
  wxtoken demo fetch APPID     fetch APPID's token from the fake WeChat as another party would

Run "wxtoken demo reject --help" or "wxtoken demo fetch --help" for their flags and examples.
`

func demoCommand(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	if len(args) == 0 {
		return usagef("need a subcommand: reject or fetch (see wxtoken demo --help)")
	}
	switch args[0] {
	case "reject":
		return demoReject(args[1:], getenv, stdout)
	case "fetch":
		return demoFetch(args[1:], getenv, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, demoOverview)
		return errHelp
	}
	return usagef("unknown subcommand %q: use reject or fetch (see wxtoken demo --help)", args[0])
}

const demoRejectSummary = `Make the fake WeChat of "wxtoken serve --demo" reject an app's current
token, as WeChat does to a token it ended early: calls with it get 40001.
Then "wxtoken refresh APPID --force" rotates it (the refresher asks WeChat
whether the token still works, and it no longer does), and a call through
the demo's agent is refreshed and retried once. Only the demo's fake WeChat
has this; it listens on loopback only.`

func demoReject(args []string, getenv func(string) string, stdout io.Writer) error {
	c := newCommand("demo reject", "APPID", demoRejectSummary,
		"  wxtoken demo reject "+demoAppID+"\n  wxtoken refresh "+demoAppID+" --force\n"+
			"  curl -s http://127.0.0.1:8180/app/"+demoAppID+"/cgi-bin/user/get")
	var listen string
	demoWeChatListenFlag(c, &listen)
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("need exactly one APPID: %s or %s (see wxtoken demo reject --help)", demoAppID, demoStableAppID)
	}
	appid := rest[0]
	if err := kv.ValidateAppID(appid); err != nil {
		return usageError{err.Error()}
	}
	if err := checkDemoListen("demo-wechat-listen", listen); err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+listen+demoRejectPath+appid, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	resp, err := callDemoWeChat(req, listen)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the demo's fake WeChat at %s: %s", listen, strings.TrimSpace(string(body)))
	}
	if strings.TrimSpace(string(body)) == "0" {
		fmt.Fprintf(stdout, "%s: no token to reject: the demo has not fetched one yet, or already rejected it\n", appid)
		return nil
	}
	fmt.Fprintf(stdout, "%s: the demo's fake WeChat now rejects its current token (errcode 40001).\n"+
		"Now `wxtoken refresh %s --force` rotates it, and a call through the demo's agent is refreshed and retried.\n", appid, appid)
	return nil
}

// callDemoWeChat sends req to the demo's fake WeChat at listen. Its error
// leaves out the URL, which may hold the demo's AppSecret, and says what
// to check.
func callDemoWeChat(req *http.Request, listen string) (*http.Response, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("no demo fake WeChat answers at %s (is `wxtoken serve --demo` running, with this --demo-wechat-listen?): %w", listen, err)
	}
	return resp, nil
}

// demoWeChatListenFlag adds the flag of the demo commands that call the
// demo's fake WeChat: where it listens.
func demoWeChatListenFlag(c *command, listen *string) {
	c.String(listen, "demo-wechat-listen", "WXTOKEN_DEMO_WECHAT_LISTEN", defaultDemoWeChatListen,
		"`host:port` of the demo's fake WeChat, as given to serve --demo")
}
