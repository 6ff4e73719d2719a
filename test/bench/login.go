package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"time"
)

// Part "login": what the agent adds to a mini program's login call. The
// same jscode2session exchange, each with a code of its own, sent directly
// to the fake WeChat with the secret (what a backend holding the secret
// does) and through the agent with none (the agent asks the refresher
// over NATS, which calls the fake with the secret), one after the other,
// on keep-alive connections. The refresher runs in this process, as in
// part "agent"; the agent is the real binary.

// loginResult is part "login"'s measure.
type loginResult struct {
	direct, agent dist
	agentCPU      time.Duration // the agent's CPU time over the calls through it
	calls         int
}

// loginBench runs part "login" with calls exchanges each way.
func loginBench(calls int) loginResult {
	sys := startAgentBench("login")
	defer sys.stop()
	type path struct {
		base    string
		secret  string
		client  *http.Client
		samples []time.Duration
	}
	paths := []*path{{base: sys.wechat.URL, secret: benchSecret}, {base: "http://" + sys.agent.addr}}
	for _, p := range paths {
		p.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	}
	user := 0
	call := func(p *path) time.Duration {
		user++
		code := sys.fake.LoginCode(benchApp, "user"+strconv.Itoa(user))
		q := url.Values{"appid": {benchApp}, "js_code": {code}, "grant_type": {"authorization_code"}}
		if p.secret != "" {
			q.Set("secret", p.secret)
		}
		t0 := time.Now()
		resp, err := p.client.Get(p.base + "/sns/jscode2session?" + q.Encode())
		if err != nil {
			fatalf("login: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"session_key"`)) {
			fatalf("login: GET %s/sns/jscode2session: %s %q %v", p.base, resp.Status, body, err)
		}
		return took
	}
	for range min(calls, 200) { // warm up, not counted
		for _, p := range paths {
			call(p)
		}
	}
	runtime.GC()
	agent0 := cpuOf(sys.agent.pids())
	for i := range calls {
		if i%1000 == 0 {
			progress("login: %d of %d exchanges each way", i, calls)
		}
		for _, p := range paths {
			p.samples = append(p.samples, call(p))
		}
	}
	res := loginResult{direct: summarize(paths[0].samples), agent: summarize(paths[1].samples),
		agentCPU: cpuOf(sys.agent.pids()) - agent0, calls: calls}
	if seen, want := len(sys.fake.LoginCalls()), 2*(calls+min(calls, 200)); seen != want {
		fatalf("login: the fake WeChat saw %d login calls, want %d: a code went twice, or not at all", seen, want)
	}
	return res
}

// loginRows prints part "login"'s benchmark lines and returns its row.
func loginRows(l loginResult) []row {
	cpu := float64(l.agentCPU.Microseconds()) / float64(l.calls)
	benchLine("Login/direct", l.direct.n, fmt.Sprintf("%.3f", ms(l.direct.p50)), "p50-ms", fmt.Sprintf("%.3f", ms(l.direct.p99)), "p99-ms",
		fmt.Sprintf("%.3f", ms(l.direct.max)), "max-ms")
	benchLine("Login/agent", l.agent.n, fmt.Sprintf("%.3f", ms(l.agent.p50)), "p50-ms", fmt.Sprintf("%.3f", ms(l.agent.p99)), "p99-ms",
		fmt.Sprintf("%.3f", ms(l.agent.max)), "max-ms", fmt.Sprintf("%.0f", cpu), "agent-cpu-µs/op")
	added50, added99 := l.agent.p50-l.direct.p50, l.agent.p99-l.direct.p99
	fmt.Printf("# login: the agent (and the refresher, over NATS) adds p50 %.3f / p99 %.3f ms\n", ms(added50), ms(added99))
	return []row{{"7 agent login", fmt.Sprintf("GET /sns/jscode2session, a new code each, keep-alive, %d calls each way, taking turns", l.calls),
		fmt.Sprintf("through the agent, no secret: p50 %.3f / p99 %.3f ms (agent CPU %.0f µs/call)", ms(l.agent.p50), ms(l.agent.p99), cpu),
		fmt.Sprintf("direct to the fake WeChat, with the secret: p50 %.3f / p99 %.3f ms", ms(l.direct.p50), ms(l.direct.p99)),
		fmt.Sprintf("adds p50 %.3f / p99 %.3f ms", ms(added50), ms(added99)), "measured", ""}}
}
