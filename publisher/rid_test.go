package publisher

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// TestAFetchRefusedForItsIPCarriesTheAddressWeChatSaw: the app (a mini
// program) whitelists 127.0.0.2 once the refresher holds a token; the
// scheduled fetch, from 127.0.0.1, gets WeChat's 40164 with a rid. The
// leader looks the rid up with the token it still holds, and the failure
// event carries rid/get's client_ip (127.0.0.1, the egress address to
// whitelist), invoke_time and cost_in_ms; the log line has them too, and
// neither has the request or the answer rid/get keeps.
func TestAFetchRefusedForItsIPCarriesTheAddressWeChatSaw(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv.ClientURL())
	fake, wechat := ridWeChat(t, fakewechat.Config{ExpiresIn: 6 * time.Second})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(ridApp))
	if err != nil {
		t.Fatal(err)
	}
	rep := runRidReplica(t, ctx, srv.ClientURL(), wechat, "one", func(c *Config) { c.RefreshBefore = 4 * time.Second })
	logs, reg := rep.logs, rep.reg
	first := firstToken(t, ctx, js)
	fake.SetWhitelist(ridApp, fakewechat.Whitelist{Allowed: []string{"127.0.0.2"}})

	msg, err := failed.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ev kv.FailureEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.ErrCode != 40164 || ev.ClientIP != "127.0.0.1" || ev.InvokeTime.IsZero() || ev.CostInMS < 0 {
		t.Fatalf("the failure event %s: want errcode 40164 with client_ip 127.0.0.1 and the invoke_time", msg.Data)
	}
	if d := ev.InvokeTime.Sub(first.FetchedAt); d < 0 || d > 10*time.Second {
		t.Errorf("invoke_time %s is not the fetch's (the token was fetched at %s)", ev.InvokeTime, first.FetchedAt)
	}
	for _, never := range []string{"request_url", "request_body", "response_body", "appid=", "secret"} {
		if strings.Contains(string(msg.Data), never) {
			t.Errorf("the failure event has %q: %s", never, msg.Data)
		}
	}
	rid, _ := wechaterr.Rid(ev.ErrMsg)
	if err := logs.await(ctx, `^WeChat's record of the refused fetch .*rid=`+rid+` .*client_ip=127\.0\.0\.1 cost_in_ms=\d+`); err != nil {
		t.Fatalf("no log line of the lookup: %v", err)
	}
	if logs.has("request_url") || logs.has("response_body") || logs.has(first.Value) {
		t.Error("a log line has rid/get's request, answer or the token")
	}
	if n := ridLookupsOf(t, reg, ridFound); n != 1 {
		t.Errorf("wxtoken_rid_lookups_total{result=found} = %v, want 1", n)
	}
}

// TestARidReportedThriceIsLookedUpOnceAndNotByAStandby: two replicas; an
// agent's reports name the rid of a 45009 three times, then another rid.
// The leader looks each up once (WeChat served rid/get twice), logs one
// WARN per rid with the app, path, errcode and rid/get's client_ip, and
// publishes no failure event; the standby looks nothing up.
func TestARidReportedThriceIsLookedUpOnceAndNotByAStandby(t *testing.T) {
	const app = ridApp
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv.ClientURL())
	fake, wechat := ridWeChat(t, fakewechat.Config{ExpiresIn: time.Hour})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(">"))
	if err != nil {
		t.Fatal(err)
	}
	replicas := []ridReplica{runRidReplica(t, ctx, srv.ClientURL(), wechat, "one"), runRidReplica(t, ctx, srv.ClientURL(), wechat, "two")}
	token := firstToken(t, ctx, js).Value
	// The token was written by the leader, which says so first.
	leader, standby := replicas[0], replicas[1]
	if !leader.r.Leading() {
		leader, standby = standby, leader
	}
	if !leader.r.Leading() || standby.r.Leading() {
		t.Fatalf("leading: %v and %v, want one replica", leader.r.Leading(), standby.r.Leading())
	}

	fake.SetQuotaLimit(app, fakewechat.PathSendMessage, 0)
	fake.SetQuotaLimit(app, fakewechat.PathUserList, 0)
	refusal := func(path string) kv.RidSeen {
		query := "?" + url.Values{"access_token": {token}}.Encode()
		var resp *http.Response
		var err error
		if path == fakewechat.PathSendMessage {
			resp, err = http.Post(wechat+path+query, "application/json", strings.NewReader(`{}`))
		} else {
			resp, err = http.Get(wechat + path + query)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var answer wechaterr.Answer
		data, _ := io.ReadAll(resp.Body)
		json.Unmarshal(data, &answer)
		rid, ok := wechaterr.Rid(answer.ErrMsg)
		if answer.ErrCode != 45009 || !ok {
			t.Fatalf("the fake answered %s, want a 45009 with a rid", data)
		}
		return kv.RidSeen{AppID: app, Path: path, ErrCode: 45009, Rid: rid, At: time.Now().UTC()}
	}
	report := func(seen kv.RidSeen) {
		data, _ := json.Marshal(kv.UsageReport{Agent: "host/1", At: time.Now().UTC(), Rids: []kv.RidSeen{seen},
			Paths: []kv.PathUsage{{AppID: app, Path: fakewechat.PathSendMessage, Calls: 1, Errors: map[string]int64{"quota": 1}}}})
		if err := nc.Publish(kv.Subjects{}.Usage(), data); err != nil {
			t.Fatal(err)
		}
	}
	// An API at its limit answers every call 45009 with a new rid: one
	// of a kind (app, path, errcode) is looked up in five minutes.
	first, sameKind, second := refusal(fakewechat.PathSendMessage), refusal(fakewechat.PathSendMessage), refusal(fakewechat.PathUserList)
	for range 3 {
		report(first)
	}
	report(sameKind)
	report(second) // reports are taken in order: once this one is looked up, those before were taken
	for _, seen := range []kv.RidSeen{first, second} {
		if err := leader.logs.await(ctx, `^WeChat refused a call an agent forwarded.* appid=`+app+` rid=`+seen.Rid+` errcode=45009 path=`+
			regexp.QuoteMeta(seen.Path)+` agent=host/1 invoke_time=\S+ client_ip=127\.0\.0\.1 cost_in_ms=\d+`); err != nil {
			t.Fatalf("no WARN line of the lookup of %s: %v", seen.Rid, err)
		}
	}
	if n := fake.QuotaUsed(app, ridGetPath); n != 2 {
		t.Errorf("WeChat served rid/get %d times, want 2 (each rid once)", n)
	}
	b, err := js.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := b.Get(ctx, kv.LedgerKey(app))
	if err != nil {
		t.Fatal(err)
	}
	if l, err := kv.DecodeLedger(app, entry.Value()); err != nil || l.Calls["rid_get"] != 2 {
		t.Errorf("the app's ledger counts %v (%v), want rid_get 2: the lookups are the leader's calls", l.Calls, err)
	}
	if n := ridLookupsOf(t, leader.reg, ridFound); n != 2 {
		t.Errorf("the leader's wxtoken_rid_lookups_total{result=found} = %v, want 2", n)
	}
	if n := ridLookupsOf(t, leader.reg, ridSkipped); n != 3 {
		t.Errorf("the leader's wxtoken_rid_lookups_total{result=skipped} = %v, want 3 (first's two repeats, and a rid of its kind)", n)
	}
	if leader.logs.has("rid=" + sameKind.Rid) {
		t.Error("a rid of a kind looked up a moment before was looked up")
	}
	for _, result := range []string{ridFound, ridRefused, ridFailed, ridNoToken, ridNotLeading, ridDropped} {
		if n := ridLookupsOf(t, standby.reg, result); n != 0 {
			t.Errorf("the standby counted %v lookups %s, want none", n, result)
		}
	}
	if standby.logs.has("WeChat refused a call an agent forwarded") {
		t.Error("the standby logged a lookup")
	}
	nc.Flush()
	if msg, err := failed.NextMsg(0); err == nil {
		t.Errorf("an agent's rid was published as a failure event: %s", msg.Data)
	}
}

// ridLookupsOf is wxtoken_rid_lookups_total{result} in reg.
func ridLookupsOf(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "wxtoken_rid_lookups_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

const ridApp = "wxa000000000000001"

// ridWeChat is a fake WeChat of ridApp.
func ridWeChat(t *testing.T, cfg fakewechat.Config) (*fakewechat.Server, string) {
	t.Helper()
	fake := fakewechat.New(cfg)
	fake.AddApp(ridApp, "secret-of-"+ridApp)
	web := httptest.NewServer(fake)
	t.Cleanup(web.Close)
	return fake, web.URL
}

// ridReplica is a running refresher of ridApp, its metrics and its log.
type ridReplica struct {
	r    *Refresher
	reg  *prometheus.Registry
	logs *logLines
}

// runRidReplica runs a refresher of ridApp, and returns once it is ready.
func runRidReplica(t *testing.T, ctx context.Context, url, wechat, instance string, tune ...func(*Config)) ridReplica {
	t.Helper()
	nc, _ := natstest.Connect(t, url)
	rep := ridReplica{reg: prometheus.NewRegistry(), logs: &logLines{}}
	cfg := Config{Apps: []App{{AppID: ridApp, Secret: NewSecret("secret-of-" + ridApp)}}, UpstreamURL: wechat,
		UpstreamTimeout: time.Second, Registerer: rep.reg, Instance: instance, Logger: slog.New(rep.logs)}
	for _, f := range tune {
		f(&cfg)
	}
	var err error
	if rep.r, err = New(nc, cfg); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rep.r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-done
	})
	return rep
}

// firstToken waits for ridApp's first token in the bucket.
func firstToken(t *testing.T, ctx context.Context, js jetstream.JetStream) kv.Credential {
	t.Helper()
	for {
		b, err := js.KeyValue(ctx, kv.DefaultBucket)
		if err == nil {
			w, err := b.Watch(ctx, ridApp)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			for e := range w.Updates() {
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				c, err := kv.DecodeCredential(ridApp, e.Value())
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			t.Fatal("no token in the bucket")
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no token bucket: %v", err)
		case <-time.After(20 * time.Millisecond): // polled: the bucket's creation announces nothing here
		}
	}
}
