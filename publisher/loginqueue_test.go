package publisher

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestOnlyAReplicaThatCanUseTheSecretAnswersLogins runs two refreshers
// against a WeChat that whitelists the address of one of them (127.0.0.2).
// The other (127.0.0.3) answers logins while it leads alone, leaves the
// queue group when it hands the lease over, so that every login is made
// by the good replica, from its address, each code once; and answers
// again once the good one stopped and it leads (WeChat's 40164 then comes
// back unchanged: no replica could do better).
func TestOnlyAReplicaThatCanUseTheSecretAnswersLogins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const appid, secret = "wxstand00000000002", "the-secret-of-the-app"
	fake, wechat := goodOnlyWeChat(t, appid, secret)
	srv := natstest.Server(t, nil)
	app := App{AppID: appid, Secret: NewSecret(secret)}
	const (
		joinedLeading = "answering logins in the queue group: it leads"
		left          = "left the login queue group: WeChat refuses 1 app(s) from where it stands"
	)

	_, badLog, _ := runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "bad", "127.0.0.3")
	badLog.await(t, ctx, "this replica cannot lead "+appid, 1)
	badLog.await(t, ctx, joinedLeading, 1) // alone it leads, so it answers
	leftBefore := strings.Count(badLog.String(), left)

	good, goodLog, stopGood := runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "good", "127.0.0.2")
	goodLog.await(t, ctx, "became leader", 1)
	badLog.await(t, ctx, left, leftBefore+1) // handed over: out of the group
	goodLog.await(t, ctx, "answering logins in the queue group", 1)
	if !good.Leading() {
		t.Fatal("the good replica does not lead")
	}

	nc, _ := natstest.Connect(t, srv.ClientURL())
	login := func(code string) kv.LoginReply {
		return askLogin(t, ctx, nc, appid, kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: code, GrantType: "authorization_code"})
	}
	const logins = 20 // were the bad one in the group, all to the good one: 1 in 2^20
	codes := map[string]bool{}
	for i := range logins {
		user := "user" + strconv.Itoa(i)
		code := fake.LoginCode(appid, user)
		codes[code] = true
		reply := login(code)
		var answer struct {
			OpenID string `json:"openid"`
		}
		if reply.Error != nil || reply.Status != 200 || json.Unmarshal(reply.Body, &answer) != nil || answer.OpenID != fakewechat.OpenID(appid, user) {
			t.Fatalf("login %d: status %d, error %v, body %s; want the user logged in by the good replica", i, reply.Status, reply.Error, reply.Body)
		}
	}
	calls := fake.LoginCalls()
	if len(calls) != logins {
		t.Errorf("WeChat saw %d login calls for %d codes", len(calls), logins)
	}
	for _, call := range calls {
		if call.From != "127.0.0.2" || !codes[call.Code] || call.ErrCode != 0 {
			t.Errorf("WeChat saw %+v, want a code of the test once, from 127.0.0.2, accepted", call)
		}
		delete(codes, call.Code)
	}

	stopGood() // the bad one leads again, alone, and so answers
	badLog.await(t, ctx, "became leader", 2)
	badLog.await(t, ctx, joinedLeading, 2)
	reply := login(fake.LoginCode(appid, "late"))
	if reply.Error != nil || !strings.Contains(string(reply.Body), `"errcode":40164`) || !strings.Contains(string(reply.Body), "invalid ip 127.0.0.3") {
		t.Errorf("a login to the lone bad replica: error %v, body %s; want WeChat's 40164 for 127.0.0.3, unchanged", reply.Error, reply.Body)
	}
}

// TestALoginUnderWayWhenItsReplicaLeavesIsAnswered: a replica that leaves
// the queue group (here: it hands the lease over, and WeChat refuses it)
// still answers the login it was exchanging when it left.
func TestALoginUnderWayWhenItsReplicaLeavesIsAnswered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const appid, secret = "wxstand00000000003", "the-secret-of-the-app"
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(appid, secret)
	fake.SetWhitelist(appid, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}})
	// WeChat holds the login call until the test lets it answer.
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	wechat := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == fakewechat.PathJSCode2Session {
			arrived <- struct{}{}
			<-release
		}
		fake.ServeHTTP(w, r)
	}))
	defer wechat.Close()
	defer close(release)
	srv := natstest.Server(t, nil)
	app := App{AppID: appid, Secret: NewSecret(secret)}
	patient := func(cfg *Config) { cfg.UpstreamTimeout, cfg.LeaseTTL = 10*time.Second, 20*time.Second } // the held call must not time out

	_, badLog, _ := runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "bad", "127.0.0.3", patient)
	badLog.await(t, ctx, "answering logins in the queue group: it leads", 1)
	leftBefore := strings.Count(badLog.String(), "left the login queue group")

	nc, _ := natstest.Connect(t, srv.ClientURL())
	data, _ := json.Marshal(kv.LoginRequest{Path: kv.LoginJSCode2Session, Code: fake.LoginCode(appid, "held"), GrantType: "authorization_code"})
	answered := make(chan *nats.Msg, 1)
	go func() {
		waiting, stop := context.WithTimeout(ctx, 15*time.Second) // the held call is released well before
		defer stop()
		msg, err := nc.RequestWithContext(waiting, kv.Subjects{}.Login(appid), data)
		if err != nil {
			msg = &nats.Msg{Data: []byte(err.Error())}
		}
		answered <- msg
	}()
	select {
	case <-arrived: // the bad replica, alone in the group, is exchanging it
	case <-ctx.Done():
		t.Fatal("the login never reached WeChat")
	}

	runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "good", "127.0.0.2", patient)
	badLog.await(t, ctx, "left the login queue group", leftBefore+1)
	release <- struct{}{}
	msg := <-answered
	var reply kv.LoginReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Error != nil || !strings.Contains(string(reply.Body), "invalid ip 127.0.0.3") {
		t.Errorf("the login under way: %s (error %v), want the bad replica's answer, WeChat's 40164", msg.Data, reply.Error)
	}
}
