package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// The platform of these tests, as WeChat knows it.
const (
	componentApp    = "wx00000000000c0a01"
	componentSecret = "component-secret"
	componentToken  = "component-msg-token"
	componentAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	authorizerA     = "wx00000000000a0001"
)

// platformApp is the apps file's entry of the platform.
func platformApp() publisher.App {
	return publisher.App{AppID: componentApp, Secret: publisher.NewSecret(componentSecret),
		Platform: &publisher.Platform{MessageToken: publisher.NewSecret(componentToken), EncodingAESKey: publisher.NewSecret(componentAESKey)}}
}

// platformSystem is a NATS server, a fake WeChat with the platform, and a
// refresher of it whose callback is served at hook.
type platformSystem struct {
	nc       *nats.Conn
	fake     *fakewechat.Server
	hook     string // the callback URL
	tokens   jetstream.KeyValue
	platform jetstream.KeyValue
	logs     *notifyingBuffer
	failed   *nats.Subscription // the platform's failure events, from before the refresher started
	natsURL  string
	wechat   string // the fake's base URL
}

func startPlatform(t *testing.T, ctx context.Context, wechat fakewechat.Config, cfg publisher.Config) platformSystem {
	t.Helper()
	fake, url := testenv.WeChat(t, wechat)
	return startPlatformAt(t, ctx, fake, url, cfg)
}

// startPlatformAt is startPlatform with the fake served at url.
func startPlatformAt(t *testing.T, ctx context.Context, fake *fakewechat.Server, url string, cfg publisher.Config) platformSystem {
	t.Helper()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(componentApp))
	if err != nil {
		t.Fatal(err)
	}
	if err := fake.AddPlatform(componentApp, componentSecret, componentToken, componentAESKey); err != nil {
		t.Fatal(err)
	}
	logs := newNotifyingBuffer()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	cfg.Apps = append(cfg.Apps, platformApp())
	cfg.UpstreamURL, cfg.Logger = url, textLogger(logs)
	running := testenv.Refresher(t, nc, cfg)
	sys := platformSystem{nc: nc, fake: fake, hook: serveHTTP(t, running.Refresher.Callback()) + "/", tokens: openBucket(t, ctx, nc),
		logs: logs, failed: failed, natsURL: srv.ClientURL(), wechat: url}
	// The callback stores pushes once the refresher has opened the
	// platform bucket; it is ready after that.
	for err := running.Refresher.Ready(); err != nil; err = running.Refresher.Ready() {
		select {
		case <-ctx.Done():
			t.Fatalf("the refresher never got ready: %v", err)
		case <-time.After(10 * time.Millisecond): // polled: readiness announces nothing
		}
	}
	js, _ := jetstream.New(nc)
	if sys.platform, err = js.KeyValue(ctx, kv.DefaultPlatformBucket); err != nil {
		t.Fatal(err)
	}
	return sys
}

// authorized pushes a ticket and has authorizer authorize the platform,
// and returns the authorizer's first token and the key's puts after it.
func (sys platformSystem) authorized(t *testing.T, ctx context.Context, authorizer string) (kv.Credential, <-chan jetstream.KeyValueEntry) {
	t.Helper()
	if _, _, err := sys.fake.PushTicket(ctx, sys.hook, componentApp); err != nil {
		t.Fatal(err)
	}
	tokens := testenv.Entries(t, sys.tokens, authorizer)
	if _, err := sys.fake.Authorize(ctx, sys.hook, componentApp, authorizer); err != nil {
		t.Fatal(err)
	}
	return nextPut(t, ctx, tokens), tokens
}

// authorizerRecord reads the authorizer's record in the platform bucket.
func authorizerRecord(t *testing.T, ctx context.Context, b jetstream.KeyValue, appid string) (kv.Authorizer, jetstream.KeyValueEntry) {
	t.Helper()
	e, err := b.Get(ctx, kv.AuthorizerKey(componentApp, appid))
	if err != nil {
		t.Fatalf("authorizer %s: %v", appid, err)
	}
	rec, err := kv.DecodeAuthorizer(e.Key(), e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return rec, e
}

// exposition is what /metrics would show of reg.
func exposition(reg *prometheus.Registry) string {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// nextPut returns the next put of ch, skipping deletes.
func nextPut(t *testing.T, ctx context.Context, ch <-chan jetstream.KeyValueEntry) kv.Credential {
	t.Helper()
	for {
		if e := testenv.Next(t, ctx, ch); e.Operation() == jetstream.KeyValuePut {
			return testenv.Record(t, e)
		}
	}
}

// TestPlatformFromFirstPushToAuthorizerTokens walks a platform's life: no
// ticket at first (the push is restarted, and the failure announced), then
// a push, the component token, an account authorizing, its token under its
// appid for the subscriber library, a forced refresh, and the account
// withdrawing. The refresh token in the bucket is WeChat's newest
// throughout, and no log line holds a refresh token, a code or a ticket.
func TestPlatformFromFirstPushToAuthorizerTokens(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	reg := prometheus.NewRegistry()
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{Registerer: reg})
	nc, fake, hook, tokens, failed, logs := sys.nc, sys.fake, sys.hook, sys.tokens, sys.failed, sys.logs
	component := testenv.Entries(t, tokens, componentApp)
	authorizer := testenv.Entries(t, tokens, authorizerA)
	removed := make(chan jetstream.KeyValueEntry, 16)
	testenv.Follow(t, &kvwatch.Follower{Bucket: tokens, Key: authorizerA, OnEntry: func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			removed <- e
		}
	}})

	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.Class != "ticket" || ev.AppID != componentApp {
		t.Errorf("failure event %+v: want class ticket for the platform without a verify ticket", ev)
	}
	if n := fake.StartPushCalls(componentApp); n != 1 {
		t.Errorf("api_start_push_ticket called %d times, want once", n)
	}
	// No ticket, no call: the push restart is the one call to WeChat.
	metrics := exposition(reg)
	if series := `wxtoken_upstream_requests_total{api="start_push_ticket",appid="` + componentApp + `",result="ok"}`; metricValue(t, metrics, series) != 1 {
		t.Errorf("%s = %g, want 1", series, metricValue(t, metrics, series))
	}
	if strings.Contains(metrics, `wxtoken_upstream_requests_total{api="component_token"`) {
		t.Error("a component token not asked for, with no ticket, is counted as a call to WeChat")
	}
	if strings.Contains(metrics, "wxtoken_platform_verify_ticket_age_seconds") {
		t.Error("a verify ticket age before any push")
	}
	ticket, answer, err := fake.PushTicket(ctx, hook, componentApp)
	if err != nil || answer != "success" {
		t.Fatalf("push: %q, %v", answer, err)
	}
	if got := nextPut(t, ctx, component); got.Value != fake.Current(componentApp) {
		t.Errorf("component token %q is not the one WeChat issued", got.Value)
	}

	if answer, err := fake.Authorize(ctx, hook, componentApp, authorizerA); err != nil || answer != "success" {
		t.Fatalf("authorize: %q, %v", answer, err)
	}
	first := nextPut(t, ctx, authorizer)
	if ok, _ := fake.Valid(first.Value); !ok || first.Value != fake.Current(authorizerA) {
		t.Errorf("authorizer token %q is not the one WeChat issued for the code", first.Value)
	}
	platformBucket := sys.platform
	rec, _ := authorizerRecord(t, ctx, platformBucket, authorizerA)
	if rec.RefreshToken != fake.RefreshToken(componentApp, authorizerA) || rec.Code != "" {
		t.Errorf("record %+v: want WeChat's newest refresh token and the code spent", rec.IssuedAt)
	}

	sub, err := subscriber.New(ctx, nc, authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if tok, err := sub.Current(); err != nil || tok.Value != first.Value {
		t.Fatalf("subscriber: %v; want the authorizer's token", err)
	}
	metrics = exposition(reg)
	if v := metricValue(t, metrics, `wxtoken_platform_authorizers{component_appid="`+componentApp+`"}`); v != 1 {
		t.Errorf("%g authorizers in the metrics, want 1", v)
	}
	if age := metricValue(t, metrics, `wxtoken_platform_verify_ticket_age_seconds{component_appid="`+componentApp+`"}`); age < 0 || age > 60 {
		t.Errorf("verify ticket age %g s, want the push just made", age)
	}
	// A service saw its token rejected: the refresher checks, then
	// refreshes it with the refresh token, and stores the new refresh token
	// before the token.
	fake.Revoke(first.Value)
	refreshed, err := sub.Refresh(ctx, sub.Token().Revision)
	if err != nil || refreshed.Value == first.Value {
		t.Fatalf("forced refresh: %v", err)
	}
	if ok, _ := fake.Valid(refreshed.Value); !ok {
		t.Error("the refreshed token does not work")
	}
	rec, _ = authorizerRecord(t, ctx, platformBucket, authorizerA)
	if rec.RefreshToken != fake.RefreshToken(componentApp, authorizerA) {
		t.Error("after a refresh the bucket does not hold WeChat's newest refresh token")
	}

	if answer, err := fake.Unauthorize(ctx, hook, componentApp, authorizerA); err != nil || answer != "success" {
		t.Fatalf("unauthorize: %q, %v", answer, err)
	}
	if e := testenv.Next(t, ctx, removed); e.Operation() != jetstream.KeyValueDelete {
		t.Errorf("after unauthorized the token key got a %s, want a delete", e.Operation())
	}
	if rec, _ := authorizerRecord(t, ctx, platformBucket, authorizerA); !rec.Unauthorized || rec.RefreshToken != "" {
		t.Errorf("record after unauthorized: %+v", rec.Unauthorized)
	}
	if _, err := sub.Refresh(ctx, sub.Token().Revision); err == nil {
		t.Error("a refresh of a withdrawn authorizer succeeded")
	}

	// Nothing that cannot be fetched again reached a log line.
	for _, secret := range []string{"refreshtoken@@@", "queryauthcode@@@", ticket, componentSecret, componentAESKey} {
		if lines := logs.linesWith(secret); len(lines) > 0 {
			t.Errorf("a log line holds %.20s...: %s", secret, lines[0])
		}
	}
}

// TestPlatformTicketProblems: a ticket WeChat says is expired or invalid
// restarts the push and waits for it; the next push ends the wait.
func TestPlatformTicketProblems(t *testing.T) {
	for _, code := range []int{61005, 61006} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			ctx := testenv.Context(t, 30*time.Second)
			sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
			fake, hook, failed := sys.fake, sys.hook, sys.failed
			// No ticket yet; then one that WeChat refuses once.
			if ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed); ev.Class != "ticket" {
				t.Fatalf("failure %+v: want class ticket", ev)
			}
			fake.Inject(componentApp, fakewechat.Fault{ErrCode: code})
			if _, _, err := fake.PushTicket(ctx, hook, componentApp); err != nil {
				t.Fatal(err)
			}
			component := testenv.Entries(t, sys.tokens, componentApp)
			for {
				ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
				if ev.ErrCode == code {
					if ev.Class != "ticket" || !ev.NextAttempt.After(time.Now().Add(5*time.Minute)) {
						t.Errorf("failure %+v: want class ticket, waiting for the next push", ev)
					}
					break
				}
			}
			if fake.StartPushCalls(componentApp) == 0 {
				t.Error("the push was not restarted")
			}
			if _, _, err := fake.PushTicket(ctx, hook, componentApp); err != nil {
				t.Fatal(err)
			}
			if got := nextPut(t, ctx, component); got.Value != fake.Current(componentApp) {
				t.Error("no component token after the next push")
			}
		})
	}
}

// TestAuthorizerRefreshTokenRefused: 61023 is that authorizer's
// configuration error alone: an ERROR line and a failure event, a long
// pause before the next try, and the platform's other authorizers go on.
func TestAuthorizerRefreshTokenRefused(t *testing.T) {
	const authorizerB = "wx00000000000a0002"
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{ConfigErrorBackoff: time.Hour})
	failed, _ := sys.nc.SubscribeSync(kv.Subjects{}.Failed(authorizerA))
	if _, _, err := sys.fake.PushTicket(ctx, sys.hook, componentApp); err != nil {
		t.Fatal(err)
	}
	a, b := testenv.Entries(t, sys.tokens, authorizerA), testenv.Entries(t, sys.tokens, authorizerB)
	for _, id := range []string{authorizerA, authorizerB} {
		if _, err := sys.fake.Authorize(ctx, sys.hook, componentApp, id); err != nil {
			t.Fatal(err)
		}
	}
	tokA, _ := nextPut(t, ctx, a), nextPut(t, ctx, b)
	sub, err := subscriber.New(ctx, sys.nc, authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sys.fake.Fail(authorizerA, fakewechat.Fault{ErrCode: 61023})
	sys.fake.Revoke(tokA.Value)
	if _, err := sub.Refresh(ctx, sub.Token().Revision); err == nil {
		t.Fatal("a refresh WeChat refused with 61023 succeeded")
	}
	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.ErrCode != 61023 || ev.Class != "config" || ev.NextAttempt.Before(time.Now().Add(50*time.Minute)) {
		t.Errorf("failure event %+v: want 61023, config, the next attempt an hour away", ev)
	}
	calls := sys.fake.Calls(authorizerA)
	if _, err := sub.Refresh(ctx, sub.Token().Revision); err == nil || sys.fake.Calls(authorizerA) != calls {
		t.Errorf("a second refresh request during the pause called WeChat again (%v)", err)
	}
	if len(sys.logs.linesWith("level=ERROR")) == 0 || len(sys.logs.linesWith("errcode=61023")) == 0 {
		t.Error("no ERROR line for the refused refresh token")
	}
	// The other authorizer's token is refreshed as before.
	bsub, _ := subscriber.New(ctx, sys.nc, authorizerB)
	defer bsub.Close()
	if _, err := bsub.Refresh(ctx, bsub.Token().Revision); err != nil {
		t.Errorf("the other authorizer: %v", err)
	}
	if lines := sys.logs.linesWith("refreshtoken@@@"); len(lines) > 0 {
		t.Errorf("a log line holds a refresh token: %s", lines[0])
	}
}

// TestUpdateAuthorizedExchangesTheNewCode: an account that changes what it
// authorized sends a new code; its exchange gives a new token and refresh
// token, and the record keeps no spent code.
func TestUpdateAuthorizedExchangesTheNewCode(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	first, tokens := sys.authorized(t, ctx, authorizerA)
	before, _ := authorizerRecord(t, ctx, sys.platform, authorizerA)
	if answer, err := sys.fake.UpdateAuthorization(ctx, sys.hook, componentApp, authorizerA); err != nil || answer != "success" {
		t.Fatalf("updateauthorized: %q, %v", answer, err)
	}
	second := nextPut(t, ctx, tokens)
	after, _ := authorizerRecord(t, ctx, sys.platform, authorizerA)
	switch {
	case second.Value == first.Value || second.Value != sys.fake.Current(authorizerA):
		t.Error("no new token from the new code")
	case after.RefreshToken == before.RefreshToken || after.RefreshToken != sys.fake.RefreshToken(componentApp, authorizerA):
		t.Error("the record does not hold the refresh token the new code gave")
	case after.Code != "":
		t.Error("the record keeps the spent code")
	}
}

// TestAgentServesAuthorizerTokens: `wxtoken agent` finds an authorizer's
// key in the bucket and serves its token as any app's, from WeChat's own
// path and in the calls it forwards.
func TestAgentServesAuthorizerTokens(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	first, _ := sys.authorized(t, ctx, authorizerA)
	token := first.Value
	agent := startWxtoken(t, "agent", nil, "agent", "--nats-url", sys.natsURL, "--listen", "127.0.0.1:0", "--wechat-base-url", sys.wechat,
		"--keys", componentApp+","+authorizerA)
	agent.waitOutput(t, ctx, "agent listening")
	base := "http://" + listenAddr(t, agent.output.String())
	awaitReady(t, ctx, agent, base+"/readyz")

	var answer struct {
		AccessToken string `json:"access_token"`
	}
	getJSON(t, base+"/cgi-bin/token?grant_type=client_credential&appid="+authorizerA+"&secret=unused", &answer)
	if answer.AccessToken != token {
		t.Errorf("the agent's /cgi-bin/token gave %.12q..., want the authorizer's token", answer.AccessToken)
	}
	var users struct {
		ErrCode int `json:"errcode"`
	}
	getJSON(t, base+"/app/"+authorizerA+"/cgi-bin/user/get", &users)
	if ok, _ := sys.fake.APICalls(fakewechat.PathUserList); users.ErrCode != 0 || ok != 1 {
		t.Errorf("a call forwarded with the authorizer's token: errcode %d", users.ErrCode)
	}
	if got := sys.fake.LastAPICall(fakewechat.PathUserList).Token; got != token {
		t.Errorf("the forwarded call carried %.12q..., want the authorizer's token", got)
	}
}

// getJSON decodes the JSON answer of a GET of url into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %s: %v", url, resp.Status, err)
	}
}

// TestAuthorizersWaitQuietlyForTheFirstTicket: accounts that authorize a
// platform before WeChat's first push wait for the component token without
// a log line each, and get their tokens the moment it comes.
func TestAuthorizersWaitQuietlyForTheFirstTicket(t *testing.T) {
	const accounts = 20
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	rotated := followRotations(t, sys.tokens)
	var ids []string
	for i := range accounts {
		id := fmt.Sprintf("wx00000000000b%04d", i)
		ids = append(ids, id)
		if answer, err := sys.fake.Authorize(ctx, sys.hook, componentApp, id); err != nil || answer != "success" {
			t.Fatalf("authorize %s: %q, %v", id, answer, err)
		}
	}
	// Each has tried, and waits for the component token.
	if err := sys.logs.waitForCount(ctx, "waiting for the token it is fetched with", accounts); err != nil {
		t.Fatalf("the authorizers did not all wait for the component token: %v", err)
	}
	if _, _, err := sys.fake.PushTicket(ctx, sys.hook, componentApp); err != nil {
		t.Fatal(err)
	}
	rotated.awaitEach(t, ctx, "after the first push", ids, nil)
	lines := sys.logs.linesWith("level=WARN")
	for _, line := range sys.logs.linesWith("level=ERROR") {
		if !strings.Contains(line, "the platform has no verify ticket") {
			lines = append(lines, line)
		}
	}
	if len(lines) > 0 {
		t.Errorf("%d warnings or errors beyond the platform's own missing ticket, first: %s", len(lines), lines[0])
	}
}

// TestWithdrawalDuringARefreshLeavesNoToken: an account withdraws while
// its token is being refreshed; the token that fetch stores afterwards is
// deleted too.
func TestWithdrawalDuringARefreshLeavesNoToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	fake := fakewechat.New(fakewechat.Config{})
	// WeChat answers api_authorizer_token, and the answer is held on the
	// way until the test lets it go.
	entered, release := make(chan struct{}, 1), make(chan struct{})
	url := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != fakewechat.PathAuthorizerTok {
			fake.ServeHTTP(w, r)
			return
		}
		answer := httptest.NewRecorder()
		fake.ServeHTTP(answer, r)
		entered <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer.Body.Bytes())
	}))
	sys := startPlatformAt(t, ctx, fake, url, publisher.Config{})
	first, _ := sys.authorized(t, ctx, authorizerA)
	events := make(chan jetstream.KeyValueOp, 16)
	testenv.Follow(t, &kvwatch.Follower{Bucket: sys.tokens, Key: authorizerA, OnEntry: func(e jetstream.KeyValueEntry) {
		events <- e.Operation()
	}})
	if op := <-events; op != jetstream.KeyValuePut {
		t.Fatalf("first entry %s, want the first token", op)
	}
	// The late answer's put is replaced by its delete marker a moment
	// after it is stored (the bucket keeps one entry a key), at times
	// before a watch's consumer reads it: the writes are seen as they
	// reach the bucket's subject.
	writes, err := sys.nc.SubscribeSync("$KV." + sys.tokens.Bucket() + "." + authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := subscriber.New(ctx, sys.nc, authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	fake.Revoke(first.Value)
	refreshed := make(chan error, 1)
	go func() {
		_, err := sub.Refresh(ctx, sub.Token().Revision)
		refreshed <- err
	}()
	<-entered // WeChat issued a token; the answer has not arrived
	if _, err := fake.Unauthorize(ctx, sys.hook, componentApp, authorizerA); err != nil {
		t.Fatal(err)
	}
	// The withdrawal deletes the key; then the late answer is stored, and
	// deleted again.
	if op := nextOp(t, ctx, events); op != jetstream.KeyValueDelete {
		t.Fatalf("after the withdrawal the key got a %s, want a delete", op)
	}
	close(release)
	for {
		m, err := writes.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatalf("no write of the late answer: %v", err)
		}
		if m.Header.Get("KV-Operation") != "" {
			continue // the withdrawal's delete marker
		}
		if strings.Contains(string(m.Data), first.Value) {
			t.Fatal("the late answer's token is the first one")
		}
		break
	}
	for op := nextOp(t, ctx, events); op != jetstream.KeyValueDelete; op = nextOp(t, ctx, events) {
	}
	if _, err := sys.tokens.Get(ctx, authorizerA); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the withdrawn authorizer's key: %v, want it deleted", err)
	}
	<-refreshed
}

func nextOp(t *testing.T, ctx context.Context, ch <-chan jetstream.KeyValueOp) jetstream.KeyValueOp {
	t.Helper()
	select {
	case op := <-ch:
		return op
	case <-ctx.Done():
		t.Fatal("no entry")
		return 0
	}
}

// TestServeRecordsItsPlatformsAndWarnsOfOthers: the refresher records each
// platform it serves in the platform bucket, since when, and forgets one it
// no longer serves; authorizers of a platform it does not serve, whose
// tokens nobody keeps, get one warning per platform at start and at each
// reload, with their count.
func TestServeRecordsItsPlatformsAndWarnsOfOthers(t *testing.T) {
	const unknown = "wx00000000000c0aff"
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		putAuthorizer(t, ctx, b, kv.Authorizer{ComponentAppID: unknown, AppID: fmt.Sprintf("wx00000000000e%04d", i),
			RefreshToken: "refreshtoken@@@orphan", IssuedAt: time.Now()})
	}
	if _, err := kv.RecordPlatform(ctx, b, unknown, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	forgotten := make(chan jetstream.KeyValueOp, 4)
	testenv.Follow(t, &kvwatch.Follower{Bucket: b, Key: kv.PlatformKey(unknown), OnEntry: func(e jetstream.KeyValueEntry) { forgotten <- e.Operation() }})
	if op := nextOp(t, ctx, forgotten); op != jetstream.KeyValuePut {
		t.Fatalf("the old record: %s", op)
	}
	recorded := testenv.Entries(t, b, kv.PlatformKey(componentApp))

	fake, url := testenv.WeChat(t, fakewechat.Config{})
	if err := fake.AddPlatform(componentApp, componentSecret, componentToken, componentAESKey); err != nil {
		t.Fatal(err)
	}
	logs := newNotifyingBuffer()
	started := time.Now().Truncate(time.Second)
	running := testenv.Refresher(t, nc, publisher.Config{Apps: []publisher.App{platformApp()}, UpstreamURL: url, Logger: textLogger(logs)})

	e := testenv.Next(t, ctx, recorded)
	p, err := kv.DecodeConfiguredPlatform(componentApp, e.Value())
	if err != nil || p.ConfiguredAt.Before(started) || p.ConfiguredAt.After(time.Now()) {
		t.Errorf("the platform's record %+v (%v): want the refresher's start", p, err)
	}
	if op := nextOp(t, ctx, forgotten); op != jetstream.KeyValueDelete {
		t.Errorf("the record of the platform no longer served got a %s, want a delete", op)
	}
	const warning = "component_appid=" + unknown + " authorizers=3"
	if err := logs.waitFor(ctx, warning); err != nil {
		t.Fatalf("no warning about the authorizers of %s: %v\n%s", unknown, err, logs.String())
	}
	if err := running.Refresher.SetApps([]publisher.App{platformApp()}); err != nil {
		t.Fatal(err)
	}
	if err := logs.waitForCount(ctx, warning, 2); err != nil {
		t.Fatalf("no warning at the reload: %v", err)
	}
	if lines := logs.linesWith(warning); len(lines) != 2 || !strings.Contains(lines[0], "level=WARN") {
		t.Errorf("want one WARN line at start and one at the reload, got %q", lines)
	}
	// Recorded again by the reload, it keeps the time it was first served.
	if again, err := b.Get(ctx, kv.PlatformKey(componentApp)); err != nil || again.Revision() != e.Revision() {
		t.Errorf("the reload wrote the platform's record again (%v)", err)
	}
}

// TestAFreshPlatformShowsItWaitsForTheFirstPush: a platform the refresher
// serves, with no verify ticket yet and no authorizer, shows in `status
// --platforms` and `authorizers list` as waiting for WeChat's first push,
// since the refresher first served it: when an operator looks.
func TestAFreshPlatformShowsItWaitsForTheFirstPush(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	e := testenv.Next(t, ctx, testenv.Entries(t, sys.platform, kv.PlatformKey(componentApp)))
	served, err := kv.DecodeConfiguredPlatform(componentApp, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`(?m)^` + componentApp + `\s+0\s+none: waiting for WeChat's first push since ` +
		regexp.QuoteMeta(served.ConfiguredAt.UTC().Format(time.RFC3339)) + `, \d+s ago$`)
	env := []string{"NATS_URL=" + sys.natsURL}
	for _, args := range [][]string{{"status", "--platforms"}, {"authorizers", "list"}} {
		out, errOut, code := runWxtoken(t, env, args...)
		if code != 0 || !row.MatchString(out) {
			t.Errorf("%v: exit %d, stderr %q; no row %s in:\n%s", args, code, errOut, row, out)
		}
	}
}

// lastRequest keeps the last request it passed on, to send again.
type lastRequest struct {
	next http.Handler
	mu   sync.Mutex
	uri  string
	body []byte
}

func (l *lastRequest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	l.mu.Lock()
	l.uri, l.body = r.URL.RequestURI(), body
	l.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	l.next.ServeHTTP(w, r)
}

// replayTo sends the last request again to base, and returns the status.
func (l *lastRequest) replayTo(t *testing.T, base string) int {
	t.Helper()
	l.mu.Lock()
	uri, body := l.uri, l.body
	l.mu.Unlock()
	resp, err := http.Post(base+uri, "text/xml", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReplayToAnotherReplicaIsRefused: a push taken in by one replica's
// callback and replayed to another's is refused there too, as a replay:
// the replicas share the pushes they took in, for 20 minutes.
func TestReplayToAnotherReplicaIsRefused(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{Instance: "a"})
	other := testenv.Refresher(t, testenv.Connect(t, sys.natsURL), publisher.Config{Instance: "b", Apps: []publisher.App{platformApp()},
		UpstreamURL: sys.wechat, Logger: textLogger(sys.logs)})
	for err := other.Refresher.Ready(); err != nil; err = other.Refresher.Ready() {
		select {
		case <-ctx.Done():
			t.Fatalf("the second replica never got ready: %v", err)
		case <-time.After(10 * time.Millisecond): // polled: readiness announces nothing
		}
	}
	taken := &lastRequest{next: other.Refresher.Callback()}
	otherHook := serveHTTP(t, taken) + "/"

	for _, push := range []func() (string, error){
		func() (string, error) {
			_, answer, err := sys.fake.PushTicket(ctx, otherHook, componentApp)
			return answer, err
		},
		func() (string, error) { return sys.fake.Authorize(ctx, otherHook, componentApp, authorizerA) },
	} {
		if answer, err := push(); err != nil || answer != "success" {
			t.Fatalf("a push to the second replica: %q, %v", answer, err)
		}
		if status := taken.replayTo(t, sys.hook); status != http.StatusConflict {
			t.Errorf("the push replayed to the first replica: %d, want 409", status)
		}
		if status := taken.replayTo(t, otherHook); status != http.StatusConflict {
			t.Errorf("the push replayed to the replica that took it: %d, want 409", status)
		}
	}
	js, _ := jetstream.New(sys.nc)
	replays, err := js.KeyValue(ctx, kv.ReplayBucket(kv.DefaultPlatformBucket))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := replays.Status(ctx); err != nil || st.TTL() != 20*time.Minute || st.Values() != 2 {
		t.Errorf("replay bucket: %v; want the two pushes, kept 20 minutes", err)
		if err == nil {
			t.Errorf("it holds %d, kept %s", st.Values(), st.TTL())
		}
	}
}

// TestWithdrawnAuthorizerIsSaidRemoved: an account withdraws its
// authorization; the removal is published as an event, and on the key's
// Value subject with its header, for services in any language; a
// subscriber following the key, the agent serving it, and a subscriber
// that comes later all say "removed" rather than serving the last token.
func TestWithdrawnAuthorizerIsSaidRemoved(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	sys := startPlatform(t, ctx, fakewechat.Config{}, publisher.Config{})
	removedEvents, err := sys.nc.SubscribeSync(kv.Subjects{}.Removed(">"))
	if err != nil {
		t.Fatal(err)
	}
	values, err := sys.nc.SubscribeSync(kv.Subjects{}.Value(authorizerA))
	if err != nil {
		t.Fatal(err)
	}
	sys.authorized(t, ctx, authorizerA)
	sub, err := subscriber.New(ctx, sys.nc, authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	held := sub.Token()
	agent := startWxtoken(t, "agent", nil, "agent", "--nats-url", sys.natsURL, "--listen", "127.0.0.1:0", "--wechat-base-url", sys.wechat,
		"--keys", authorizerA)
	agent.waitOutput(t, ctx, "agent listening")
	base := "http://" + listenAddr(t, agent.output.String())
	awaitReady(t, ctx, agent, base+"/readyz")
	// A long poll under way when the key goes is answered at once.
	polled := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/credentials/"+authorizerA+"?wait=60", nil)
		req.Header.Set("If-None-Match", `"`+strconv.FormatUint(held.Revision, 10)+`"`)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			close(polled)
			return
		}
		polled <- resp
	}()
	for {
		if m, err := values.NextMsgWithContext(ctx); err != nil || kv.RemovalReason(m.Header) != "" {
			t.Fatalf("a removal on the Value subject before the withdrawal: %v", err)
		} else if rev, _, _ := kv.DecodeValueMsg(m); rev == held.Revision {
			break
		}
	}
	if answer, err := sys.fake.Unauthorize(ctx, sys.hook, componentApp, authorizerA); err != nil || answer != "success" {
		t.Fatalf("unauthorize: %q, %v", answer, err)
	}

	ev, _ := nextEvent[kv.RemovalEvent](t, ctx, removedEvents)
	if ev.AppID != authorizerA || ev.Reason != kv.RemovedUnauthorized || ev.Revision <= held.Revision || time.Since(ev.RemovedAt) > time.Minute {
		t.Errorf("removal event %+v", ev)
	}
	m, err := values.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rev, body, err := kv.DecodeValueMsg(m); err != nil || rev != ev.Revision || len(body) != 0 || m.Header.Get("Wxtoken-Removed") != "unauthorized" {
		t.Errorf("on the Value subject: revision %d, body %q, headers %v (%v); want the removal at %d", rev, body, m.Header, err, ev.Revision)
	}

	// Updated holds one pending notification, which may still be the
	// first token's: wait on it until Current says the key is gone.
	for {
		select {
		case <-sub.Updated():
		case <-ctx.Done():
			t.Fatal("Updated did not fire for the removal")
		}
		if _, err := sub.Current(); errors.Is(err, subscriber.ErrRemoved) {
			break
		}
	}
	if _, err := sub.Current(); !errors.Is(err, subscriber.ErrRemoved) || !strings.Contains(err.Error(), "withdrew its authorization") {
		t.Errorf("Current after the withdrawal: %v, want ErrRemoved", err)
	}
	if _, err := sub.Refresh(ctx, sub.Token().Revision); !errors.Is(err, subscriber.ErrRemoved) {
		t.Errorf("Refresh after the withdrawal: %v, want ErrRemoved", err)
	}
	if _, err := (&http.Client{Transport: sub.Transport(nil)}).Get(sys.wechat + "/cgi-bin/getcallbackip"); !errors.Is(err, subscriber.ErrRemoved) {
		t.Errorf("a call through Transport after the withdrawal: %v, want ErrRemoved", err)
	}
	if _, err := subscriber.New(ctx, sys.nc, authorizerA); !errors.Is(err, subscriber.ErrRemoved) {
		t.Errorf("a subscriber that comes after the withdrawal: %v, want ErrRemoved", err)
	}

	var answer struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if resp := <-polled; resp == nil || resp.StatusCode != http.StatusGone {
		t.Errorf("the long poll under way: %v, want 410", resp)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get(base + "/v1/credentials/" + authorizerA)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone || answer.Error.Code != "removed" || !strings.Contains(answer.Error.Message, authorizerA+" was removed at revision") {
		t.Errorf("the agent's read: %d %+v, want 410 removed", resp.StatusCode, answer.Error)
	}
	var wechat struct {
		ErrCode int `json:"errcode"`
	}
	getJSON(t, base+"/cgi-bin/token?grant_type=client_credential&appid="+authorizerA+"&secret=unused", &wechat)
	if wechat.ErrCode != 61003 {
		t.Errorf("the agent's /cgi-bin/token: errcode %d, want 61003", wechat.ErrCode)
	}
}
