package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
)

// Part "agent": what `wxtoken agent` costs a service that reads its token
// over local HTTP, against what that service would use instead.
//
//  1. Fresh-connection reads, as PHP-FPM makes them: dial, one request,
//     read the whole answer, close. The agent's GET /v1/credentials/{appid}
//     against a GET of the same JSON from redis-server, and against a bare
//     Go net/http handler answering that JSON (the floor of net/http).
//  2. Keep-alive throughput, wrk against the agent, nginx serving the JSON
//     as a static file, and the bare Go handler.
//  3. The latency the proxy adds: the same WeChat API call sent directly to
//     the fake WeChat, through the agent, and through a bare Go
//     httputil.ReverseProxy (the floor of a Go proxy), one after the other.
//
// Each server is its own process (the agent is the real binary, built from
// ./cmd/wxtoken); the clients are in this one. Rounds alternate between the
// servers so that a noisy moment of the shared machine falls on all.

type agentOptions struct {
	reads        int    // 1: reads per server per round
	clients      int    // 1: clients reading at once, each its reads one after another
	rounds       int    // 1 and 2: rounds
	wrk          string // 2: wrk's settings
	calls        int    // 3: calls per path
	requireTools bool   // fail instead of skipping when redis-server, nginx or wrk are missing
	smoke        bool   // 3 only, tiny
}

// freshTarget is one server of measure 1 and what it took.
type freshTarget struct {
	name    string
	newRead func() func() error // a client's reader: each has its buffers
	pids    func() []int        // the server's processes, for their CPU time
	elapsed time.Duration
	cpu     time.Duration
	ops     int
	rounds  []time.Duration // per round, for the spread of the ratio
}

func (t *freshTarget) opsPerSec() float64 { return float64(t.ops) / t.elapsed.Seconds() }
func (t *freshTarget) usPerOp() float64   { return float64(t.elapsed.Microseconds()) / float64(t.ops) }
func (t *freshTarget) cpuUsPerOp() float64 {
	return float64(t.cpu.Microseconds()) / float64(t.ops)
}

// wrkTarget is one server of measure 2.
type wrkTarget struct {
	name   string
	url    string
	pids   func() []int
	reqs   float64 // requests over all rounds
	secs   float64 // wrk's duration over all rounds
	cpu    time.Duration
	rounds []float64 // requests/s per round
}

func (t *wrkTarget) rps() float64 { return t.reqs / t.secs }
func (t *wrkTarget) cpuUsPerReq() float64 {
	return float64(t.cpu.Microseconds()) / t.reqs
}

type agentResult struct {
	clients int    // of measure 1
	body    []byte // the agent's answer to GET /v1/credentials/{appid}, served by the baselines too

	fresh     []*freshTarget // agent, redis, bare; nil when skipped
	freshSkip string

	keep     []*wrkTarget // agent, nginx, bare
	keepSkip string
	wrkArgs  string

	direct, proxied, bareProxied dist
	agentCPU, bareCPU            time.Duration // the proxies' CPU time over measure 3
	proxyCalls                   int
}

// agentBench runs part "agent".
func agentBench(o agentOptions) agentResult {
	sys := startAgentBench("agent")
	defer sys.stop()
	dir, fake, wechat, agent := sys.dir, sys.fake, sys.wechat, sys.agent
	credPath := "/v1/credentials/" + benchApp
	body, token := agentCredential(agent.addr, credPath)

	res := agentResult{body: body, wrkArgs: o.wrk, clients: max(1, o.clients)}
	if o.smoke {
		res.freshSkip, res.keepSkip = "not run in -smoke", "not run in -smoke"
	} else {
		res.fresh, res.freshSkip = freshReads(o, dir, agent, credPath, body, token)
		res.keep, res.keepSkip = keepAlive(o, dir, agent, credPath, body)
	}

	calls := o.calls
	if o.smoke {
		calls = 50
	}
	bareProxy := startBare(dir, body, wechat.URL)
	defer bareProxy.stop()
	res.direct, res.proxied, res.bareProxied, res.agentCPU, res.bareCPU = proxyLatency(wechat.URL, agent, bareProxy, token, calls)
	res.proxyCalls = calls
	if ok, rejected := fake.APICalls(fakewechat.PathUserList); rejected != 0 || ok < 3*calls {
		fatalf("agent: the fake WeChat counted %d good and %d refused calls of %s, expected %d good", ok, rejected, fakewechat.PathUserList, 3*calls)
	}
	return res
}

// agentSystem is what parts "agent" and "login" measure: an embedded NATS
// server, the fake WeChat with benchApp and a refresher of it in this
// process, and `wxtoken agent` (the binary, built from ./cmd/wxtoken)
// serving benchApp, ready.
type agentSystem struct {
	dir    string
	fake   *fakewechat.Server
	wechat *httptest.Server
	agent  *process
	stops  []func() // in the order to call them
}

// startAgentBench starts the agentSystem of part.
func startAgentBench(part string) *agentSystem {
	dir, err := os.MkdirTemp("", "wxtoken-bench-"+part)
	if err != nil {
		fatalf("%s: %v", part, err)
	}
	sys := &agentSystem{dir: dir}
	sys.stops = append(sys.stops, func() { os.RemoveAll(dir) })
	// nginx's worker may run as another user: let it read the JSON.
	os.Chmod(dir, 0o755)

	progress("%s: building cmd/wxtoken", part)
	binary := filepath.Join(dir, "wxtoken")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/wxtoken/wxtoken/cmd/wxtoken").CombinedOutput(); err != nil {
		fatalf("go build of cmd/wxtoken (run the benchmark from the repository root): %v\n%s", err, out)
	}

	opts, _ := embedded.Options("127.0.0.1:-1", filepath.Join(dir, "nats"))
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		fatalf("%s: %v", part, err)
	}
	sys.stops = append([]func(){srv.Shutdown}, sys.stops...)
	sys.fake = fakewechat.New(fakewechat.Config{})
	sys.fake.AddApp(benchApp, benchSecret)
	sys.wechat = httptest.NewServer(sys.fake)
	sys.stops = append([]func(){sys.wechat.Close}, sys.stops...)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		fatalf("%s: %v", part, err)
	}
	sys.stops = append([]func(){nc.Close}, sys.stops...)
	r, err := publisher.New(nc, publisher.Config{
		Apps:        []publisher.App{{AppID: benchApp, Secret: publisher.NewSecret(benchSecret)}},
		UpstreamURL: sys.wechat.URL, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fatalf("%s: %v", part, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	sys.stops = append([]func(){func() {
		cancel()
		<-done
	}}, sys.stops...)

	progress("%s: starting wxtoken agent", part)
	sys.agent = startAgent(binary, dir, srv.ClientURL(), sys.wechat.URL)
	sys.stops = append([]func(){sys.agent.stop}, sys.stops...)
	return sys
}

// benchSecret is benchApp's AppSecret at the fake WeChat.
const benchSecret = "bench-secret"

// stop stops what startAgentBench started, the last first.
func (sys *agentSystem) stop() {
	for _, stop := range sys.stops {
		stop()
	}
}

// process is a server this benchmark started.
type process struct {
	cmd     *exec.Cmd
	addr    string
	stdin   io.WriteCloser // for the bare role: it runs until this closes
	log     string         // file with its output
	stopped sync.Once
}

// started are the servers of this part that run, stopped by fatalf too:
// the agent, redis-server and nginx would outlive the benchmark.
var started struct {
	sync.Mutex
	list []*process
}

func track(p *process) *process {
	started.Lock()
	defer started.Unlock()
	started.list = append(started.list, p)
	return p
}

var fatal sync.Once

// fatalf stops the servers this part started, then fails as log.Fatalf.
func fatalf(format string, args ...any) {
	fatal.Do(func() {
		started.Lock()
		list := started.list
		started.Unlock()
		for _, p := range list {
			p.stop()
		}
	})
	log.Fatalf(format, args...)
}

func (p *process) pids() []int { return []int{p.cmd.Process.Pid} }

// stop ends the process: SIGTERM, and SIGKILL if it is still there 5 s later.
func (p *process) stop() { p.stopped.Do(p.terminate) }

func (p *process) terminate() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	wait := make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(wait)
	}()
	select {
	case <-wait:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-wait
	}
}

// died reports the output of a process that ended before it was ready.
func (p *process) died(what string) {
	out, _ := os.ReadFile(p.log)
	fatalf("%s did not start:\n%s", what, out)
}

// freePort is a TCP port on 127.0.0.1 that nothing listened on a moment ago.
func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("agent: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startLogged(dir, name string, argv ...string) *process {
	logFile := filepath.Join(dir, name+".log")
	f, err := os.Create(logFile)
	if err != nil {
		fatalf("agent: %v", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		fatalf("%s: %v", name, err)
	}
	f.Close()
	return track(&process{cmd: cmd, log: logFile})
}

// exited says whether the process has ended (and reaps it).
func (p *process) exited() bool {
	var status syscall.WaitStatus
	pid, _ := syscall.Wait4(p.cmd.Process.Pid, &status, syscall.WNOHANG, nil)
	return pid == p.cmd.Process.Pid
}

// startAgent runs `wxtoken agent` for benchApp and waits until it is ready.
func startAgent(binary, dir, natsURL, wechatURL string) *process {
	addr := freePort()
	p := startLogged(dir, "agent", binary, "agent", "--nats-url", natsURL, "--listen", addr,
		"--wechat-base-url", wechatURL, "--keys", benchApp)
	p.addr = addr
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.exited() {
			p.died("wxtoken agent")
		}
		if time.Now().After(deadline) {
			p.stop()
			p.died("wxtoken agent (not ready in 30 s)")
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return p
		}
	}
}

// agentCredential is the agent's answer to GET path, and the token in it.
func agentCredential(addr, path string) ([]byte, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		fatalf("agent: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var c struct{ Value string }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &c) != nil || c.Value == "" {
		fatalf("agent: GET %s: %s %s", path, resp.Status, body)
	}
	return body, c.Value
}

// runBare is the child role "bare": a net/http server on 127.0.0.1 that
// answers every request with the JSON in file, as the agent's credential
// handler would with no work to do; or, with upstream, an
// httputil.ReverseProxy to it that forwards each request as it came. It
// prints its address and runs until its standard input closes.
func runBare(file, upstream string) {
	body, err := os.ReadFile(file)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	length := strconv.Itoa(len(body))
	var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		h["Cache-Control"] = []string{"no-store"}
		h["Etag"] = []string{`"1"`}
		w.Write(body)
	})
	if upstream != "" {
		u, err := url.Parse(upstream)
		if err != nil {
			log.Fatal(err)
		}
		handler = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) }}
	}
	go http.Serve(ln, handler)
	fmt.Printf("ADDR=%s\n", ln.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n')
}

// startBare runs the role "bare", serving body or, when upstream is given,
// proxying to it.
func startBare(dir string, body []byte, upstream ...string) *process {
	file := filepath.Join(dir, "bare.json")
	os.WriteFile(file, body, 0o644)
	self, err := os.Executable()
	if err != nil {
		fatalf("agent: %v", err)
	}
	args := []string{"-role", "bare", "-body", file}
	if len(upstream) > 0 {
		args = append(args, "-upstream", upstream[0])
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		fatalf("agent: %v", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		fatalf("bare process: %v", err)
	}
	return track(&process{cmd: cmd, stdin: stdin, addr: strings.TrimSpace(strings.TrimPrefix(line, "ADDR="))})
}

// tool is the path of a program, or "" with the reason it is missing.
func tool(name string, require bool) (string, string) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, ""
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), ""
		}
	}
	if require {
		fatalf("agent: %s not installed, and -require-tools is set", name)
	}
	return "", name + " not installed"
}

// startRedis runs redis-server with nothing on disk, and stores body under key.
func startRedis(path, dir, key string, body []byte) *process {
	addr := freePort()
	_, port, _ := net.SplitHostPort(addr)
	p := startLogged(dir, "redis", path, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no")
	p.addr = addr
	set := respCommand("SET", key, string(body))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.exited() {
			p.died("redis-server")
		}
		if time.Now().After(deadline) {
			p.stop()
			p.died("redis-server (not answering in 10 s)")
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		c.Write(set)
		reply, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if reply == "+OK\r\n" {
			return p
		}
	}
}

func respCommand(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// startNginx runs nginx with one worker, in the foreground, with its own
// prefix under dir, serving body as the static file at path.
func startNginx(bin, dir, path string, body []byte) *process {
	prefix := filepath.Join(dir, "nginx")
	root := filepath.Join(prefix, "www")
	file := filepath.Join(root, filepath.FromSlash(path))
	for _, d := range []string{filepath.Dir(file), filepath.Join(prefix, "logs"), filepath.Join(prefix, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			fatalf("agent: %v", err)
		}
	}
	os.WriteFile(file, body, 0o644)
	addr := freePort()
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/json;
    server {
        listen %[2]s;
        root %[3]s;
        add_header Cache-Control no-store;
    }
}
`, prefix, addr, root)
	confFile := filepath.Join(prefix, "nginx.conf")
	os.WriteFile(confFile, []byte(conf), 0o644)
	p := startLogged(dir, "nginx", bin, "-p", prefix, "-c", confFile, "-e", filepath.Join(prefix, "logs", "error.log"))
	p.addr = addr
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.exited() {
			p.died("nginx")
		}
		if time.Now().After(deadline) {
			p.stop()
			p.died("nginx (not answering in 10 s)")
		}
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			continue
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
			p.stop()
			fatalf("nginx: GET %s: %s %q", path, resp.Status, got)
		}
		return p
	}
}

// nginxPids is nginx's master and its worker.
func nginxPids(p *process) func() []int {
	return func() []int { return append(p.pids(), children(p.cmd.Process.Pid)...) }
}

func children(pid int) []int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func cpuOf(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		sum += processCPU(pid)
	}
	return sum
}

// httpFreshRead is one read as PHP's curl makes it under PHP-FPM
// (curl_init, curl_exec, curl_close): a new connection, one HTTP/1.1
// request, the answer read to the end its Content-Length gives, and the
// connection closed by the client, as redisFreshRead closes its own. The
// answer must be a 200 containing want.
func httpFreshRead(addr, path string, want []byte) func() error {
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: */*\r\n\r\n")
	ok := []byte("HTTP/1.1 200 ")
	return freshRead(addr, req, func(b []byte) (int, error) { return answerLength(b), nil }, func(answer []byte) bool {
		return bytes.HasPrefix(answer, ok) && bytes.Contains(answer, want)
	})
}

// answerLength is the length of an HTTP answer whose head is in b (its
// head and its Content-Length of body), or -1 while the head is not.
func answerLength(b []byte) int {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return -1
	}
	for line := range bytes.SplitSeq(b[:end], []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(name, []byte("Content-Length")) {
			if size, err := strconv.Atoi(string(bytes.TrimSpace(value))); err == nil {
				return end + 4 + size
			}
		}
	}
	return end + 4 // no body
}

// redisFreshRead is one read as phpredis makes it without persistent
// connections: connect, GET key, read the whole bulk reply, close.
func redisFreshRead(addr, key string, want []byte) func() error {
	return freshRead(addr, respCommand("GET", key), bulkLength, func(reply []byte) bool { return bytes.Contains(reply, want) })
}

// bulkLength is the length of a RESP bulk reply whose first line is in b,
// or -1 while it is not.
func bulkLength(b []byte) (int, error) {
	end := bytes.Index(b, []byte("\r\n"))
	if end <= 0 {
		return -1, nil
	}
	size, err := strconv.Atoi(string(b[1:end]))
	if b[0] != '$' || err != nil || size < 0 {
		return 0, fmt.Errorf("reply %q", b)
	}
	return end + 2 + size + 2, nil
}

// freshRead returns one read on a connection of its own: dial, write req,
// read until length (which says -1 while it cannot tell yet) is reached,
// check the answer with good, close.
func freshRead(addr string, req []byte, length func([]byte) (int, error), good func([]byte) bool) func() error {
	buf := make([]byte, 4096)
	return func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			return err
		}
		n, need := 0, -1
		for need < 0 || n < need {
			if n == len(buf) {
				buf = append(buf, make([]byte, len(buf))...)
			}
			m, err := c.Read(buf[n:])
			n += m
			if err != nil {
				return fmt.Errorf("after %q: %w", buf[:n], err)
			}
			if need < 0 {
				if need, err = length(buf[:n]); err != nil {
					return err
				}
			}
		}
		if !good(buf[:n]) {
			return fmt.Errorf("answer %q", buf[:n])
		}
		return nil
	}
}

// freshReads is measure 1.
func freshReads(o agentOptions, dir string, agent *process, path string, body []byte, token string) ([]*freshTarget, string) {
	redisBin, missing := tool("redis-server", o.requireTools)
	if missing != "" {
		return nil, missing
	}
	redis := startRedis(redisBin, dir, benchApp, body)
	defer redis.stop()
	bare := startBare(dir, body)
	defer bare.stop()
	want := []byte(`"` + token + `"`)
	targets := []*freshTarget{
		{name: "agent", newRead: func() func() error { return httpFreshRead(agent.addr, path, want) }, pids: agent.pids},
		{name: "redis", newRead: func() func() error { return redisFreshRead(redis.addr, benchApp, want) }, pids: redis.pids},
		{name: "bare-go", newRead: func() func() error { return httpFreshRead(bare.addr, path, want) }, pids: bare.pids},
	}
	clients := max(1, o.clients)
	perClient := max(1, o.reads/clients)
	readers := make([][]func() error, len(targets))
	for i, t := range targets {
		for range clients {
			readers[i] = append(readers[i], t.newRead())
		}
	}
	// reads runs each client's n reads of target i, the clients at once.
	reads := func(i, n int) {
		var wg sync.WaitGroup
		for _, read := range readers[i] {
			wg.Go(func() {
				for range n {
					if err := read(); err != nil {
						fatalf("agent: fresh read of %s: %v", targets[i].name, err)
					}
				}
			})
		}
		wg.Wait()
	}
	for i := range targets { // warm up
		reads(i, max(1, min(perClient, 1000/clients)))
	}
	for round := range o.rounds {
		// The order turns each round, so that none is always first after
		// the pause of the collection.
		for j := range targets {
			i := (round + j) % len(targets)
			t := targets[i]
			progress("agent: fresh-connection reads, round %d of %d: %s", round+1, o.rounds, t.name)
			runtime.GC()
			cpu0 := cpuOf(t.pids())
			t0 := time.Now()
			reads(i, perClient)
			took := time.Since(t0)
			t.cpu += cpuOf(t.pids()) - cpu0
			t.elapsed += took
			t.ops += perClient * clients
			t.rounds = append(t.rounds, took)
		}
	}
	return targets, ""
}

var wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)\b`)

// keepAlive is measure 2.
func keepAlive(o agentOptions, dir string, agent *process, path string, body []byte) ([]*wrkTarget, string) {
	nginxBin, missing := tool("nginx", o.requireTools)
	if missing != "" {
		return nil, missing
	}
	wrkBin, missing := tool("wrk", o.requireTools)
	if missing != "" {
		return nil, missing
	}
	nginx := startNginx(nginxBin, dir, path, body)
	defer nginx.stop()
	bare := startBare(dir, body)
	defer bare.stop()
	targets := []*wrkTarget{
		{name: "agent", url: "http://" + agent.addr + path, pids: agent.pids},
		{name: "nginx", url: "http://" + nginx.addr + path, pids: nginxPids(nginx)},
		{name: "bare-go", url: "http://" + bare.addr + path, pids: bare.pids},
	}
	args := strings.Fields(o.wrk)
	for round := range o.rounds {
		for i := range targets {
			t := targets[(round+i)%len(targets)]
			progress("agent: wrk %s, round %d of %d: %s", o.wrk, round+1, o.rounds, t.name)
			runtime.GC()
			cpu0 := cpuOf(t.pids())
			out, err := exec.Command(wrkBin, append(args, t.url)...).CombinedOutput()
			if err != nil {
				fatalf("agent: wrk %s: %v\n%s", t.url, err, out)
			}
			t.cpu += cpuOf(t.pids()) - cpu0
			text := string(out)
			if strings.Contains(text, "Non-2xx") || strings.Contains(text, "Socket errors") {
				fatalf("agent: wrk against %s saw errors:\n%s", t.name, text)
			}
			m := wrkRequests.FindStringSubmatch(text)
			if m == nil {
				fatalf("agent: wrk output not understood:\n%s", text)
			}
			reqs, _ := strconv.ParseFloat(m[1], 64)
			d, _ := time.ParseDuration(m[2] + m[3])
			t.reqs += reqs
			t.secs += d.Seconds()
			t.rounds = append(t.rounds, reqs/d.Seconds())
		}
	}
	return targets, ""
}

// proxyLatency is measure 3: calls sequential keep-alive calls of
// GET /cgi-bin/user/get directly to the fake WeChat, as many through the
// agent and as many through the bare Go proxy, taking turns call by call.
func proxyLatency(wechatURL string, agent, bare *process, token string, calls int) (direct, proxied, bareProxied dist, agentCPU, bareCPU time.Duration) {
	q := "/cgi-bin/user/get?" + url.Values{"access_token": {token}}.Encode()
	type path struct {
		url     string
		client  *http.Client
		samples []time.Duration
	}
	paths := []*path{{url: wechatURL + q}, {url: "http://" + agent.addr + q}, {url: "http://" + bare.addr + q}}
	for _, p := range paths {
		p.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	}
	call := func(p *path) ([]byte, time.Duration) {
		t0 := time.Now()
		resp, err := p.client.Get(p.url)
		if err != nil {
			fatalf("agent: GET %s: %v", p.url, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"next_openid"`)) {
			fatalf("agent: GET %s: %s %q %v", p.url, resp.Status, body, err)
		}
		return body, took
	}
	// The proxies must pass WeChat's answer unchanged.
	want, _ := call(paths[0])
	for _, p := range paths[1:] {
		if got, _ := call(p); !bytes.Equal(got, want) {
			fatalf("agent: through %s %q, directly %q", p.url, got, want)
		}
	}
	for range min(calls, 200) { // warm up, not counted
		for _, p := range paths {
			call(p)
		}
	}
	runtime.GC()
	agent0, bare0 := cpuOf(agent.pids()), cpuOf(bare.pids())
	for i := range calls {
		if i%1000 == 0 {
			progress("agent: proxy latency, %d of %d calls each", i, calls)
		}
		for _, p := range paths {
			_, took := call(p)
			p.samples = append(p.samples, took)
		}
	}
	agentCPU, bareCPU = cpuOf(agent.pids())-agent0, cpuOf(bare.pids())-bare0
	return summarize(paths[0].samples), summarize(paths[1].samples), summarize(paths[2].samples), agentCPU, bareCPU
}

// agentRows prints part "agent"'s benchmark lines and returns its table rows.
func agentRows(a agentResult) []row {
	var rows []row
	fmt.Printf("# agent: credential JSON %d bytes\n", len(a.body))
	if a.fresh == nil {
		fmt.Printf("# agent fresh-connection reads: skipped: %s\n", a.freshSkip)
		rows = append(rows, row{"7 agent fresh reads", "dial, GET, read to close", "skipped: " + a.freshSkip, "", "", "≤ 1.0x redis", ""})
	} else {
		for _, t := range a.fresh {
			benchLine("AgentFreshRead/"+t.name, t.ops, fmt.Sprintf("%.0f", 1000*t.usPerOp()), "ns/op",
				fmt.Sprintf("%.0f", t.opsPerSec()), "ops/s", fmt.Sprintf("%.1f", t.cpuUsPerOp()), "server-cpu-µs/op")
		}
		ag, rd, bare := a.fresh[0], a.fresh[1], a.fresh[2]
		ratio := ag.elapsed.Seconds() / rd.elapsed.Seconds()
		lo, hi := roundRatios(ag.rounds, rd.rounds)
		fmt.Printf("# agent fresh reads: agent/redis time %.2fx (rounds %.2f–%.2f), bare-go/redis %.2fx, agent/bare-go %.2fx\n",
			ratio, lo, hi, bare.elapsed.Seconds()/rd.elapsed.Seconds(), ag.elapsed.Seconds()/bare.elapsed.Seconds())
		how := "one after another"
		if a.clients > 1 {
			how = fmt.Sprintf("%d clients at once", a.clients)
		}
		rows = append(rows, row{"7 agent fresh reads", fmt.Sprintf("dial, GET /v1/credentials, read to close; %d rounds of %d, %s", len(ag.rounds), ag.ops/len(ag.rounds), how),
			fmt.Sprintf("%.0f reads/s (%.1f µs each; agent CPU %.1f µs)", ag.opsPerSec(), ag.usPerOp(), ag.cpuUsPerOp()),
			fmt.Sprintf("redis GET %.0f/s (%.1f µs; CPU %.1f µs); bare Go %.0f/s (%.2fx redis time; CPU %.1f µs)",
				rd.opsPerSec(), rd.usPerOp(), rd.cpuUsPerOp(), bare.opsPerSec(), bare.elapsed.Seconds()/rd.elapsed.Seconds(), bare.cpuUsPerOp()),
			fmt.Sprintf("%.2fx redis time (rounds %.2f–%.2f)", ratio, lo, hi), "≤ 1.0x redis time", verdict(ratio <= 1.0)})
	}
	if a.keep == nil {
		fmt.Printf("# agent keep-alive: skipped: %s\n", a.keepSkip)
		rows = append(rows, row{"7 agent keep-alive", "wrk", "skipped: " + a.keepSkip, "", "", "≥ 0.8x nginx", ""})
	} else {
		for _, t := range a.keep {
			benchLine("AgentKeepAlive/"+t.name, int(t.reqs), fmt.Sprintf("%.0f", t.rps()), "req/s",
				fmt.Sprintf("%.1f", t.cpuUsPerReq()), "server-cpu-µs/op")
		}
		ag, ng, bare := a.keep[0], a.keep[1], a.keep[2]
		ratio := ag.rps() / ng.rps()
		lo, hi := roundRatios(ag.rounds, ng.rounds)
		fmt.Printf("# agent keep-alive: agent/nginx %.2fx (rounds %.2f–%.2f), bare-go/nginx %.2fx, agent/bare-go %.2fx\n",
			ratio, lo, hi, bare.rps()/ng.rps(), ag.rps()/bare.rps())
		rows = append(rows, row{"7 agent keep-alive", fmt.Sprintf("wrk %s, GET /v1/credentials, %d rounds", a.wrkArgs, len(ag.rounds)),
			fmt.Sprintf("%.0f req/s (agent CPU %.1f µs/req)", ag.rps(), ag.cpuUsPerReq()),
			fmt.Sprintf("nginx static file %.0f req/s (CPU %.1f µs); bare Go %.0f req/s (%.2fx nginx; CPU %.1f µs)",
				ng.rps(), ng.cpuUsPerReq(), bare.rps(), bare.rps()/ng.rps(), bare.cpuUsPerReq()),
			fmt.Sprintf("%.2fx nginx (rounds %.2f–%.2f)", ratio, lo, hi), "≥ 0.8x nginx", verdict(ratio >= 0.8)})
	}
	perCall := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(a.proxyCalls) }
	for _, p := range []struct {
		name string
		d    dist
		cpu  string
	}{{"direct", a.direct, ""}, {"agent", a.proxied, fmt.Sprintf("%.0f", perCall(a.agentCPU))}, {"bare-go-proxy", a.bareProxied, fmt.Sprintf("%.0f", perCall(a.bareCPU))}} {
		pairs := []any{fmt.Sprintf("%.3f", ms(p.d.p50)), "p50-ms", fmt.Sprintf("%.3f", ms(p.d.p99)), "p99-ms", fmt.Sprintf("%.3f", ms(p.d.max)), "max-ms"}
		if p.cpu != "" {
			pairs = append(pairs, p.cpu, "proxy-cpu-µs/op")
		}
		benchLine("AgentProxy/"+p.name, p.d.n, pairs...)
	}
	added50, added99 := a.proxied.p50-a.direct.p50, a.proxied.p99-a.direct.p99
	fmt.Printf("# agent proxy: the agent adds p50 %.3f / p99 %.3f ms, the bare Go proxy p50 %.3f / p99 %.3f ms\n",
		ms(added50), ms(added99), ms(a.bareProxied.p50-a.direct.p50), ms(a.bareProxied.p99-a.direct.p99))
	rows = append(rows, row{"7 agent proxy", fmt.Sprintf("GET /cgi-bin/user/get, keep-alive, %d calls each, taking turns", a.proxyCalls),
		fmt.Sprintf("through the agent: p50 %.3f / p99 %.3f ms (agent CPU %.0f µs/call)", ms(a.proxied.p50), ms(a.proxied.p99), perCall(a.agentCPU)),
		fmt.Sprintf("direct to the fake WeChat: p50 %.3f / p99 %.3f ms; bare Go ReverseProxy: p50 %.3f / p99 %.3f ms (CPU %.0f µs/call)",
			ms(a.direct.p50), ms(a.direct.p99), ms(a.bareProxied.p50), ms(a.bareProxied.p99), perCall(a.bareCPU)),
		fmt.Sprintf("adds p50 %.3f / p99 %.3f ms", ms(added50), ms(added99)), "p99 added ≤ 0.5 ms", verdict(added99 <= 500*time.Microsecond)})
	return rows
}

// roundRatios is the least and greatest ratio a[i]/b[i] of one round.
func roundRatios[T time.Duration | float64](a, b []T) (lo, hi float64) {
	for i := range a {
		r := float64(a[i]) / float64(b[i])
		if i == 0 || r < lo {
			lo = r
		}
		if i == 0 || r > hi {
			hi = r
		}
	}
	return lo, hi
}
