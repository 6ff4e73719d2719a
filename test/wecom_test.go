package test

import (
	"encoding/json"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

const corpA = "ww000000000000000a"

// wecomApps registers WeCom app secrets of corpA at the fake, one per
// agent, and returns them with their tickets.
func wecomApps(fake *fakewechat.Server, tickets []publisher.Ticket, agents ...string) []publisher.App {
	apps := make([]publisher.App, len(agents))
	for i, agent := range agents {
		secret := "wecom-secret-of-" + agent
		fake.AddWeComApp(corpA, agent, secret)
		apps[i] = publisher.App{CorpID: corpA, Agent: agent, Secret: publisher.NewSecret(secret), Tickets: tickets}
	}
	return apps
}

// TestWeComAppsOfACorpNeverShareAKey: each app secret of a corp has its
// own token under "<corpid>-<agent>", fetched with gettoken and its own
// secret, and its own agent_config ticket; the corp's jsapi ticket is
// kept under each app that asks for it.
func TestWeComAppsOfACorpNeverShareAKey(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := wecomApps(fake, []publisher.Ticket{publisher.TicketJSAPI, publisher.TicketAgentConfig}, "1000002", "contacts")
	b := openBucket(t, ctx, nc)
	agentKey, contactsKey := kv.WeComKey(corpA, "1000002"), kv.WeComKey(corpA, "contacts")
	agentTokens, contactsTokens := testenv.Entries(t, b, agentKey), testenv.Entries(t, b, contactsKey)
	agentCorpTicket := testenv.Entries(t, b, agentKey+".jsapi_ticket")
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: "http://127.0.0.1:1", WeComURL: url})

	agent, contacts := testenv.Record(t, testenv.Next(t, ctx, agentTokens)), testenv.Record(t, testenv.Next(t, ctx, contactsTokens))
	if agent.Value == contacts.Value {
		t.Fatal("two app secrets of one corp share a token")
	}
	if agent.Value != fake.Current(agentKey) || contacts.Value != fake.Current(contactsKey) {
		t.Error("a stored token is not the one WeCom gave that app secret")
	}
	if agent.API != kv.APIWeCom || agent.Key != agentKey {
		t.Errorf("record %+v: want appid %s and api wecom", agent, agentKey)
	}

	sub, err := subscriber.New(ctx, nc, agentKey+".agent_config_ticket")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	config, err := jssdk.SignAgentConfig(sub, "https://oa.example.com/approve")
	if err != nil {
		t.Fatal(err)
	}
	ticket, valid := fake.Ticket(agentKey, "agent_config")
	if !valid || config.CorpID != corpA || config.AgentID != "1000002" ||
		config.Signature != jssdk.Signature(ticket, config.NonceStr, config.Timestamp, "https://oa.example.com/approve") {
		t.Errorf("agentConfig %+v is not signed with the app's agent_config ticket", config)
	}
	corp, err := subscriber.New(ctx, nc, contactsKey+".jsapi_ticket")
	if err != nil {
		t.Fatal(err)
	}
	defer corp.Close()
	if c, err := jssdk.Sign(corp, "https://oa.example.com/"); err != nil || c.AppID != corpA {
		t.Errorf("wx.config with the corp's ticket: %+v, %v; want it signed for the corp", c, err)
	}
	testenv.Next(t, ctx, agentCorpTicket)
	for _, key := range []string{agentKey, contactsKey} {
		if calls, _, dead := fake.TicketCalls(key, "jsapi"); calls == 0 || dead != 0 {
			t.Errorf("%s: %d jsapi ticket calls, %d with a dead token", key, calls, dead)
		}
	}
}

// TestWeComTokenRefusedIsCheckedAndReplaced: WeCom ends a token early; a
// service's Transport sees 40014, the refresher checks the token with
// WeCom's getcallbackip, fetches a new one, and the call is retried.
func TestWeComTokenRefusedIsCheckedAndReplaced(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := wecomApps(fake, nil, "1000002")
	key := kv.WeComKey(corpA, "1000002")
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: "http://127.0.0.1:1", WeComURL: url, MinForceInterval: time.Nanosecond})
	sub, err := subscriber.New(ctx, nc, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	held := sub.Token()
	fake.Revoke(held.Value) // WeCom ends it early
	if ok, code := fake.Valid(held.Value); ok || code != 40014 {
		t.Fatalf("revoked WeCom token: %v, %d; want 40014", ok, code)
	}
	client := &http.Client{Transport: sub.Transport(nil)}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/cgi-bin/getcallbackip", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var answer struct {
		ErrCode int      `json:"errcode"`
		IPs     []string `json:"ip_list"`
	}
	if json.Unmarshal(body, &answer) != nil || answer.ErrCode != 0 || len(answer.IPs) == 0 {
		t.Fatalf("the call through Transport got %s; want it retried with a new token", body)
	}
	if now := sub.Token(); now.Revision <= held.Revision || now.Value != fake.Current(key) {
		t.Errorf("after the refresh the service holds revision %d, want a newer one with WeCom's new token", now.Revision)
	}
	if fake.Checks(key) == 0 {
		t.Error("the refused token was not checked with WeCom's getcallbackip")
	}
}

// TestWeComFrequencyLimitPausesToTheNextMinute: 45009 from WeCom is a
// frequency limit, per minute and per hour, not the daily quota: the
// failure event's next attempt is the next minute, not midnight.
func TestWeComFrequencyLimitPausesToTheNextMinute(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := wecomApps(fake, nil, "1000002")
	key := kv.WeComKey(corpA, "1000002")
	fake.Inject(key, fakewechat.Fault{ErrCode: 45009, ErrMsg: "api freq out of limit"})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(key))
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: "http://127.0.0.1:1", WeComURL: url})
	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	after := time.Now()
	if ev.ErrCode != 45009 || ev.Class != "frequency" || ev.AppID != key {
		t.Fatalf("failure event %+v, want a frequency failure of %s", ev, key)
	}
	// The failure fell between before and after: the next minute of one
	// of them (they differ only if a minute began in between).
	next := func(at time.Time) time.Time { return at.Truncate(time.Minute).Add(time.Minute) }
	if !ev.NextAttempt.Equal(next(before)) && !ev.NextAttempt.Equal(next(after)) {
		t.Errorf("next attempt %s, want the next minute (%s or %s)", ev.NextAttempt, next(before).UTC(), next(after).UTC())
	}
}

// shiftedClock is the real clock moved on by a settable offset.
type shiftedClock struct{ offset atomic.Int64 }

func (c *shiftedClock) now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

func (c *shiftedClock) afterFunc(d time.Duration, f func()) *time.Timer { return time.AfterFunc(d, f) }

// TestWeComCorpTicketCountsFromItsFirstAppearance: a corp has one jsapi
// ticket; an app of the corp added later stores the same ticket with the
// expiry counted from when the first app saw it, not from its own fetch.
func TestWeComCorpTicketCountsFromItsFirstAppearance(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	jsapi := []publisher.Ticket{publisher.TicketJSAPI}
	apps := wecomApps(fake, jsapi, "1000002", "1000003")
	b := openBucket(t, ctx, nc)
	first := testenv.Entries(t, b, kv.WeComKey(corpA, "1000002")+".jsapi_ticket")
	later := testenv.Entries(t, b, kv.WeComKey(corpA, "1000003")+".jsapi_ticket")
	var clock shiftedClock
	r := testenv.Refresher(t, nc, publisher.Config{Apps: apps[:1], UpstreamURL: "http://127.0.0.1:1", WeComURL: url,
		Clock: publisher.Clock{Now: clock.now, AfterFunc: clock.afterFunc}})
	seen := ticket(t, testenv.Next(t, ctx, first))

	clock.offset.Store(int64(10 * time.Minute)) // the second app comes ten minutes later
	if err := r.SetApps(apps); err != nil {
		t.Fatal(err)
	}
	again := ticket(t, testenv.Next(t, ctx, later))
	if again.Value != seen.Value {
		t.Fatal("the corp's two apps got different jsapi tickets: the fake should give one per corp")
	}
	if !again.FetchedAt.Equal(seen.FetchedAt) || !again.ExpiresAt.Equal(seen.ExpiresAt) {
		t.Errorf("the later app's record says fetched %s, expires %s; want the first appearance's %s and %s",
			again.FetchedAt, again.ExpiresAt, seen.FetchedAt, seen.ExpiresAt)
	}
}
