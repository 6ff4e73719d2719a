package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestTheProxyMovesToTheSecondBaseAfterTwoFailuresInARow: for each way
// api.weixin.qq.com fails, the agent forwards a call there, passes its
// failure back, and forwards the next there too; after the second failure
// in a row it warns and forwards calls to api2.weixin.qq.com, which
// answers them with the token the refresher keeps (the two domains share
// WeChat's state); /metrics shows the move. Each call goes to one base
// only: a failed call is not sent again elsewhere.
func TestTheProxyMovesToTheSecondBaseAfterTwoFailuresInARow(t *testing.T) {
	const app = "wxa000000000000001"
	ctx, nc, fake, _ := refreshedApp(t, app)

	for _, outage := range []fakewechat.Outage{fakewechat.Refused, fakewechat.ServerError, fakewechat.Busy, fakewechat.Hang} {
		t.Run(outage.String(), func(t *testing.T) {
			first, second := domain(t, fake), domain(t, fake)
			web, records := startAgent(t, ctx, Config{Conn: nc, Keys: []string{app}, WeChatBase: mustURL(t, first.URL),
				WeChatFallbacks: []*url.URL{mustURL(t, second.URL)}, WeComBase: mustURL(t, first.URL),
				UpstreamTimeout: 500 * time.Millisecond})

			first.Fail(outage)
			for i := range 2 {
				status, body := get(t, ctx, web+fakewechat.PathUserList)
				if status == http.StatusOK && !strings.Contains(body, `"errcode":-1`) {
					t.Fatalf("call %d during the outage answered %d %s, want the failure passed back", i+1, status, body)
				}
				if second.Answered() != 0 {
					t.Fatalf("call %d went to the second base too", i+1)
				}
			}
			warned := awaitLog(t, ctx, records, "warning of the move", func(r logRecord) bool { return r.level == slog.LevelWarn && strings.Contains(r.msg, "API base failed") },
				func(logRecord) {})
			if warned.attrs["base"] != first.URL || warned.attrs["next"] != second.URL {
				t.Errorf("the warning names %v, want base %s and next %s", warned.attrs, first.URL, second.URL)
			}
			for i := range 3 {
				if status, body := get(t, ctx, web+fakewechat.PathUserList); status != http.StatusOK || !strings.Contains(body, `"total"`) {
					t.Fatalf("call %d after the move answered %d %s", i+3, status, body)
				}
			}
			if second.Answered() != 3 || first.Answered() != 0 {
				t.Fatalf("answered: first %d, second %d; want 0 and 3", first.Answered(), second.Answered())
			}
			_, metrics := get(t, ctx, web+"/metrics")
			for _, line := range []string{
				`wxtoken_agent_upstream_base_current{base="` + second.URL + `"} 1`,
				`wxtoken_agent_upstream_base_up{base="` + first.URL + `"} 0`,
			} {
				if !strings.Contains(metrics, line) {
					t.Errorf("/metrics has no %s", line)
				}
			}
		})
	}
}

// TestAnswersOfTheAPIDoNotMoveTheProxy: a 4xx or an errcode other than -1
// is WeChat answering; calls stay on the first base.
func TestAnswersOfTheAPIDoNotMoveTheProxy(t *testing.T) {
	const app = "wxa000000000000001"
	ctx, nc, fake, _ := refreshedApp(t, app)
	first, second := domain(t, fake), domain(t, fake)
	web, _ := startAgent(t, ctx, Config{Conn: nc, Keys: []string{app}, WeChatBase: mustURL(t, first.URL),
		WeChatFallbacks: []*url.URL{mustURL(t, second.URL)}, WeComBase: mustURL(t, first.URL)})
	for _, f := range []fakewechat.Fault{{Status: http.StatusNotFound}, {ErrCode: 45009}, {ErrCode: 48001}} {
		fake.FailAPI(fakewechat.PathUserList, f)
		for range 3 {
			status, body := get(t, ctx, web+fakewechat.PathUserList)
			if status == http.StatusOK && strings.Contains(body, `"total"`) {
				t.Fatalf("the fault %+v was not answered: %d %s", f, status, body)
			}
		}
	}
	if first.Answered() != 9 || second.Answered() != 0 {
		t.Fatalf("answered: first %d, second %d; want 9 and 0", first.Answered(), second.Answered())
	}
}

// refreshedApp is the set-up of a test of the proxy: an embedded NATS, the
// fake WeChat (tokens an hour long) at the returned URL, and a refresher of
// app, which holds the app's token once it returns; the context bounds the
// test.
func refreshedApp(t *testing.T, app string) (context.Context, *nats.Conn, *fakewechat.Server, string) {
	t.Helper()
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, wechat := testenv.WeChat(t, fakewechat.Config{ExpiresIn: time.Hour})
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, app), UpstreamURL: wechat})
	testenv.Next(t, ctx, testenv.Entries(t, testenv.Bucket(t, ctx, nc), app))
	return ctx, nc, fake, wechat
}

// startAgent runs an agent of cfg, its logs sent to the channel it
// returns, and returns its server's URL once it holds its keys.
func startAgent(t *testing.T, ctx context.Context, cfg Config) (string, <-chan logRecord) {
	t.Helper()
	_, web, records := runAgent(t, ctx, cfg)
	return web, records
}

// runAgent is startAgent that returns the agent too, for a test that
// closes it itself.
func runAgent(t *testing.T, ctx context.Context, cfg Config) (*Agent, string, <-chan logRecord) {
	t.Helper()
	records := make(chan logRecord, 256)
	cfg.Logger = slog.New(recordingHandler{records})
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Run()
	t.Cleanup(func() { a.Close() })
	web := httptest.NewServer(a.Server().Handler)
	t.Cleanup(web.Close)
	awaitLog(t, ctx, records, `"agent ready"`, func(r logRecord) bool { return r.msg == "agent ready" }, func(logRecord) {})
	return a, web.URL, records
}

func domain(t *testing.T, fake *fakewechat.Server) *fakewechat.Domain {
	t.Helper()
	d, err := fake.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
