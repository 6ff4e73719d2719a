package publisher

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

const (
	loginApp    = "wx00000000000010b1"
	loginSecret = "secret-of-the-login-app"
)

// loginReplica is a running refresher of loginApp, its metrics and its
// log, as text.
type loginReplica struct {
	r    *Refresher
	reg  *prometheus.Registry
	logs *logLines
}

// runLoginReplica runs a refresher of loginApp on NATS at url against the
// fake at wechat, and returns once it is ready.
func runLoginReplica(t *testing.T, ctx context.Context, url, wechat, instance string) loginReplica {
	t.Helper()
	nc, _ := natstest.Connect(t, url)
	rep := loginReplica{reg: prometheus.NewRegistry(), logs: &logLines{}}
	var err error
	rep.r, err = New(nc, Config{Apps: []App{{AppID: loginApp, Secret: NewSecret(loginSecret)}}, UpstreamURL: wechat,
		UpstreamTimeout: time.Second, Registerer: rep.reg, Instance: instance,
		Logger: slog.New(rep.logs)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rep.r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-done
	})
	for err := rep.r.Ready(); err != nil; err = rep.r.Ready() {
		select {
		case <-ctx.Done():
			t.Fatalf("the refresher never got ready: %v", err)
		case <-time.After(10 * time.Millisecond): // polled: readiness announces nothing
		}
	}
	return rep
}

// logins is the count of the replica's login exchanges with result.
func (rep loginReplica) logins(result string) float64 {
	families, _ := rep.reg.Gather()
	total := 0.0
	for _, f := range families {
		if f.GetName() != "wxtoken_logins_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// askLogin sends req for key on nc and returns the refresher's reply.
func askLogin(t *testing.T, ctx context.Context, nc *nats.Conn, key string, req kv.LoginRequest) kv.LoginReply {
	t.Helper()
	data, _ := json.Marshal(req)
	msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Login(key), data)
	if err != nil {
		t.Fatalf("login request: %v", err)
	}
	var reply kv.LoginReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatal(err)
	}
	return reply
}

// TestEveryReplicaExchangesLoginCodesWithTheSecret: the leader and the
// standby both answer login requests, with the app's secret put in; each
// code reaches WeChat once and WeChat's answer comes back as it was; no
// code, session_key or secret is logged.
func TestEveryReplicaExchangesLoginCodesWithTheSecret(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(loginApp, loginSecret)
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	replicas := []loginReplica{runLoginReplica(t, ctx, srv.ClientURL(), wechat.URL, "a"), runLoginReplica(t, ctx, srv.ClientURL(), wechat.URL, "b")}
	nc, _ := natstest.Connect(t, srv.ClientURL())

	const logins = 24 // a replica left out of all of them: 2 in 2^24
	var said []string
	for i := range logins {
		code := fake.LoginCode(loginApp, "user"+string(rune('a'+i)))
		reply := askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: code, GrantType: "authorization_code"})
		var answer struct {
			OpenID string `json:"openid"`
		}
		if reply.Error != nil || reply.Status != 200 || json.Unmarshal(reply.Body, &answer) != nil || answer.OpenID != fakewechat.OpenID(loginApp, "user"+string(rune('a'+i))) {
			t.Fatalf("login %d: %+v (%s)", i, reply, reply.Body)
		}
		said = append(said, code, string(reply.Body))
	}
	for _, call := range fake.LoginCalls() {
		if !call.Secret || call.ErrCode != 0 {
			t.Errorf("WeChat saw %+v, want the secret and a success", call)
		}
	}
	if n := len(fake.LoginCalls()); n != logins {
		t.Errorf("WeChat saw %d calls for %d codes", n, logins)
	}
	for i, rep := range replicas {
		if rep.logins("ok") == 0 {
			t.Errorf("replica %d (leading: %v) answered no login", i, rep.r.Leading())
		}
		for _, s := range append(said, loginSecret) {
			if rep.logs.has(s) {
				t.Errorf("replica %d logged a code, an answer or the secret", i)
				break
			}
		}
	}

	// A code used again: WeChat's own answer, unchanged.
	code := fake.LoginCode(loginApp, "again")
	askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: code, GrantType: "authorization_code"})
	again := askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: code, GrantType: "authorization_code"})
	if again.Error != nil || !strings.Contains(string(again.Body), `"errcode":40163`) {
		t.Errorf("a code used twice: %+v (%s), want WeChat's 40163", again, again.Body)
	}
}

// TestAWebLoginAndItsRenewal: the oauth2 exchange carries the secret, the
// renewal with the user's refresh token does not, as WeChat's API needs
// none.
func TestAWebLoginAndItsRenewal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(loginApp, loginSecret)
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	runLoginReplica(t, ctx, srv.ClientURL(), wechat.URL, "a")
	nc, _ := natstest.Connect(t, srv.ClientURL())

	reply := askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginOAuthAccessToken,
		Code: fake.OAuthCode(loginApp, "web-user", "snsapi_base"), GrantType: "authorization_code"})
	var answer struct {
		RefreshToken string `json:"refresh_token"`
		OpenID       string `json:"openid"`
	}
	if reply.Error != nil || json.Unmarshal(reply.Body, &answer) != nil || answer.RefreshToken == "" {
		t.Fatalf("the web login: %+v (%s)", reply, reply.Body)
	}
	renewed := askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginOAuthRefreshToken, RefreshToken: answer.RefreshToken, GrantType: "refresh_token"})
	if renewed.Error != nil || !strings.Contains(string(renewed.Body), answer.OpenID) {
		t.Errorf("the renewal: %+v (%s)", renewed, renewed.Body)
	}
	calls := fake.LoginCalls()
	if len(calls) != 2 || !calls[0].Secret || calls[1].Secret {
		t.Errorf("WeChat saw %+v: want the secret on the exchange alone", calls)
	}
}

// TestLoginsTheRefresherRefuses: a key it keeps no app of, a WeCom app, a
// component form for an app, and a request that is not one are refused
// without a call to WeChat.
func TestLoginsTheRefresherRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(loginApp, loginSecret)
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	rep := runLoginReplica(t, ctx, srv.ClientURL(), wechat.URL, "a")
	nc, _ := natstest.Connect(t, srv.ClientURL())

	for _, tc := range []struct {
		name, key string
		req       kv.LoginRequest
		code      string
	}{
		{"an unknown app", "wx00000000000010ff", kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: "c"}, kv.CodeUnknownApp},
		{"a component form for an app", loginApp, kv.LoginRequest{Path: kv.LoginComponentJSCode2Session, Code: "c"}, kv.CodeUnknownApp},
		{"not a login path", loginApp, kv.LoginRequest{Path: "/cgi-bin/token"}, kv.CodeBadRequest},
	} {
		reply := askLogin(t, ctx, nc, tc.key, tc.req)
		if reply.Error == nil || reply.Error.Code != tc.code || reply.Body != nil {
			t.Errorf("%s: %+v, want %s", tc.name, reply, tc.code)
		}
	}
	if n := len(fake.LoginCalls()); n != 0 {
		t.Errorf("WeChat saw %d login calls, want none", n)
	}
	if rep.logins("refused") != 2 {
		t.Errorf("refused logins counted: %v, want 2", rep.logins("refused"))
	}
}

// TestALoginWeChatDoesNotAnswer: the agent is told that WeChat gave no
// answer, in words with neither the secret nor the code, and so is the log.
func TestALoginWeChatDoesNotAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gone := httptest.NewServer(nil)
	gone.Close() // refuses every connection
	srv := natstest.Server(t, nil)
	rep := runLoginReplica(t, ctx, srv.ClientURL(), gone.URL, "a")
	nc, _ := natstest.Connect(t, srv.ClientURL())

	const code = "a-code-that-must-stay-unsaid"
	reply := askLogin(t, ctx, nc, loginApp, kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: code, GrantType: "authorization_code"})
	if reply.Error == nil || reply.Error.Code != kv.CodeUpstream || strings.Contains(reply.Error.Message, code) || strings.Contains(reply.Error.Message, loginSecret) {
		t.Errorf("the reply: %+v, want upstream, without the code or the secret", reply)
	}
	if !rep.logs.has("login exchange got no answer from WeChat") || rep.logs.has(code) || rep.logs.has(loginSecret) {
		t.Errorf("the log: %q, want the failure, without the code or the secret", rep.logs.lines)
	}
	if rep.logins("unanswered") != 1 {
		t.Errorf("unanswered logins counted: %v, want 1", rep.logins("unanswered"))
	}
}
