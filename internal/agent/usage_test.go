package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// TestTheProxyCountsItsCallsAndReportsThem: an app's daily limit on
// user/get is 2 (the fake's per-path limit). Three calls through the agent
// and one message sent: /metrics counts the calls by app, path and class
// (two ok and one quota on user/get, one ok on the message's path) with
// their latency, and the usage report, read by a NATS subscriber on
// <prefix>.usage, carries the cumulative counts and the rid of the 45009,
// as WeChat's errmsg named it, once; with nothing new, no further report.
func TestTheProxyCountsItsCallsAndReportsThem(t *testing.T) {
	const app = "wxa000000000000001"
	const every = 50 * time.Millisecond
	ctx, nc, fake, wechat := refreshedApp(t, app)
	reports := usageReports(t, nc)
	fake.SetQuotaLimit(app, fakewechat.PathUserList, 2)
	web, _ := startAgent(t, ctx, Config{Conn: nc, Keys: []string{app}, WeChatBase: mustURL(t, wechat), WeComBase: mustURL(t, wechat), UsageEvery: every})

	var rid string
	for i := range 3 {
		status, body := get(t, ctx, web+fakewechat.PathUserList)
		var answer wechaterr.Answer
		json.Unmarshal([]byte(body), &answer)
		if want := map[bool]int{true: 45009, false: 0}[i == 2]; status != http.StatusOK || answer.ErrCode != want {
			t.Fatalf("call %d answered %d %s, want errcode %d", i+1, status, body, want)
		}
		if i == 2 {
			var ok bool
			if rid, ok = wechaterr.Rid(answer.ErrMsg); !ok {
				t.Fatalf("the 45009 names no rid: %q", answer.ErrMsg)
			}
		}
	}
	if status, body := post(t, ctx, web+fakewechat.PathSendMessage, `{"touser":"o1","msgtype":"text","text":{"content":"hi"}}`); status != http.StatusOK || !strings.Contains(body, `"errcode":0`) {
		t.Fatalf("the message answered %d %s", status, body)
	}

	_, metrics := get(t, ctx, web+"/metrics")
	for _, line := range []string{
		`wxtoken_agent_api_calls_total{appid="` + app + `",class="ok",path="/cgi-bin/user/get"} 2`,
		`wxtoken_agent_api_calls_total{appid="` + app + `",class="quota",path="/cgi-bin/user/get"} 1`,
		`wxtoken_agent_api_calls_total{appid="` + app + `",class="ok",path="/cgi-bin/message/custom/send"} 1`,
		`wxtoken_agent_api_call_seconds_count{path="/cgi-bin/user/get"} 3`,
		`wxtoken_agent_api_call_seconds_count{path="/cgi-bin/message/custom/send"} 1`,
	} {
		if !strings.Contains(metrics, line) {
			t.Errorf("/metrics has no %s", line)
		}
	}

	// Reports may come while the calls are made: read them until one has
	// all four, and collect the rids they carried.
	var rids []kv.RidSeen
	for {
		r := nextReport(t, ctx, reports)
		rids = append(rids, r.Rids...)
		if users, sent := usageOf(r, app, fakewechat.PathUserList), usageOf(r, app, fakewechat.PathSendMessage); users.Calls == 3 && sent.Calls == 1 {
			if users.Errors["quota"] != 1 || len(users.Errors) != 1 || len(sent.Errors) != 0 || users.Seconds <= 0 {
				t.Errorf("the report's counts: user/get %+v, message %+v; want one quota error on user/get, none else, and their time", users, sent)
			}
			if r.Agent == "" || r.At.IsZero() {
				t.Errorf("the report names no agent or time: %+v", r)
			}
			break
		}
	}
	if len(rids) != 1 || rids[0] != (kv.RidSeen{AppID: app, Path: fakewechat.PathUserList, ErrCode: 45009, Rid: rid, At: rids[0].At}) || rids[0].At.IsZero() {
		t.Errorf("the reports carried the rids %+v, want %s of the 45009 once", rids, rid)
	}
	if msg, err := reports.NextMsg(5 * every); err == nil {
		t.Errorf("a report with nothing new: %s", msg.Data)
	}
}

// TestTheProxyStreamsALongAnswerItCounts: a long JSON answer (a media
// download, 4 MiB) is not read into memory to find an errcode: the caller
// has its first 64 KiB while WeChat has not finished sending, and the
// call is counted as ok.
func TestTheProxyStreamsALongAnswerItCounts(t *testing.T) {
	const app = "wxa000000000000001"
	const path = "/cgi-bin/media/get"
	ctx, nc, _, _ := refreshedApp(t, app)

	chunk := bytes.Repeat([]byte("x"), 64<<10)
	release := make(chan struct{})
	media := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(chunk)
		w.(http.Flusher).Flush()
		select { // the rest only once the caller has the start
		case <-release:
		case <-r.Context().Done():
			return
		}
		for range 63 {
			w.Write(chunk)
		}
	}))
	t.Cleanup(media.Close)
	web, _ := startAgent(t, ctx, Config{Conn: nc, Keys: []string{app}, WeChatBase: mustURL(t, media.URL), WeComBase: mustURL(t, media.URL)})

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, web+path+"?media_id=m1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the download did not start streaming (was it read into memory?): %v", err)
	}
	defer resp.Body.Close()
	start := make([]byte, len(chunk))
	if _, err := io.ReadFull(resp.Body, start); err != nil {
		t.Fatalf("the first 64 KiB did not come before WeChat sent the rest: %v", err)
	}
	close(release)
	rest, err := io.Copy(io.Discard, resp.Body)
	if err != nil || int64(len(start))+rest != 64*int64(len(chunk)) {
		t.Fatalf("the download passed %d bytes (%v), want %d", int64(len(start))+rest, err, 64*len(chunk))
	}
	_, metrics := get(t, ctx, web+"/metrics")
	if line := `wxtoken_agent_api_calls_total{appid="` + app + `",class="ok",path="` + path + `"} 1`; !strings.Contains(metrics, line) {
		t.Errorf("/metrics has no %s", line)
	}
}

// TestTheProxyCountsABoundedSetOfPaths: past maxCountedPaths, a new path
// is counted under "other" in the metrics and left out of the report, as
// is a path that is no API path; the agent warns once.
func TestTheProxyCountsABoundedSetOfPaths(t *testing.T) {
	u := newUsage()
	for i := range maxCountedPaths {
		if path, full := u.record(proxiedCall{appid: "wxa1", path: "/cgi-bin/p/" + strconv.Itoa(i)}, time.Now()); path == otherPath || full {
			t.Fatalf("call %d counted under %q, full %v", i, path, full)
		}
	}
	for i, want := range []bool{true, false} {
		if path, full := u.record(proxiedCall{appid: "wxa1", path: "/cgi-bin/new/" + strconv.Itoa(i)}, time.Now()); path != otherPath || full != want {
			t.Errorf("call past the bound counted under %q, full %v; want %q, %v", path, full, otherPath, want)
		}
	}
	if path, _ := u.record(proxiedCall{appid: "wxa1", path: "/cgi-bin/p a"}, time.Now()); path != otherPath {
		t.Errorf("a path with a space counted under %q", path)
	}
	r, _ := u.report("a", time.Now())
	if len(r.Paths) != maxCountedPaths {
		t.Errorf("the report has %d paths, want %d", len(r.Paths), maxCountedPaths)
	}
	data, _ := json.Marshal(r)
	if _, err := kv.DecodeUsageReport(data); err != nil {
		t.Errorf("the report does not decode: %v", err)
	}
}

func post(t *testing.T, ctx context.Context, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer)
}

// usageReports subscribes to the agents' usage reports.
func usageReports(t *testing.T, nc *nats.Conn) *nats.Subscription {
	t.Helper()
	reports, err := nc.SubscribeSync(kv.Subjects{Prefix: kv.DefaultSubjectPrefix}.Usage())
	if err != nil {
		t.Fatal(err)
	}
	return reports
}

func nextReport(t *testing.T, ctx context.Context, sub *nats.Subscription) kv.UsageReport {
	t.Helper()
	msg, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatalf("no usage report: %v", err)
	}
	r, err := kv.DecodeUsageReport(msg.Data)
	if err != nil {
		t.Fatalf("usage report %s: %v", msg.Data, err)
	}
	return r
}

func usageOf(r kv.UsageReport, appid, path string) kv.PathUsage {
	for _, p := range r.Paths {
		if p.AppID == appid && p.Path == path {
			return p
		}
	}
	return kv.PathUsage{}
}

// TestTheAgentReportsOnceMoreAsItStops: a report every hour, and one call
// WeChat answered with HTTP 502: nothing is published until the agent
// stops, then the report carries the call, classed http_error, and
// /metrics counted it so.
func TestTheAgentReportsOnceMoreAsItStops(t *testing.T) {
	const app = "wxa000000000000001"
	ctx, nc, fake, wechat := refreshedApp(t, app)
	reports := usageReports(t, nc)
	a, web, _ := runAgent(t, ctx, Config{Conn: nc, Keys: []string{app}, WeChatBase: mustURL(t, wechat), WeComBase: mustURL(t, wechat), UsageEvery: time.Hour})
	fake.FailAPI(fakewechat.PathUserList, fakewechat.Fault{Status: http.StatusBadGateway})
	if status, _ := get(t, ctx, web+fakewechat.PathUserList); status != http.StatusBadGateway {
		t.Fatalf("the call answered %d, want WeChat's 502", status)
	}
	_, metrics := get(t, ctx, web+"/metrics")
	if line := `wxtoken_agent_api_calls_total{appid="` + app + `",class="http_error",path="/cgi-bin/user/get"} 1`; !strings.Contains(metrics, line) {
		t.Errorf("/metrics has no %s", line)
	}
	nc.Flush()
	if msg, err := reports.NextMsg(0); err == nil {
		t.Fatalf("a report before the hour: %s", msg.Data)
	}
	a.Close()
	r := nextReport(t, ctx, reports)
	if users := usageOf(r, app, fakewechat.PathUserList); users.Calls != 1 || users.Errors["http_error"] != 1 {
		t.Errorf("the last report has %+v for user/get, want one call, an http_error", users)
	}
}

// TestACallOfNoReportedAppIsCountedButNotReported: a WeCom call (appid
// "", as counted calls it) refused with a rid is counted, but it is no
// reason to report, and a report names neither its path nor its rid.
func TestACallOfNoReportedAppIsCountedButNotReported(t *testing.T) {
	u := newUsage()
	answer := wechaterr.Answer{ErrCode: 40001, ErrMsg: "invalid credential rid: 61725984-6126f6f9-040f19c4"}
	if path, _ := u.record(proxiedCall{path: fakewechat.PathUserList, answer: answer}, time.Now()); path != fakewechat.PathUserList {
		t.Errorf("counted under %q", path)
	}
	if r, ok := u.report("a", time.Now()); ok {
		t.Errorf("a report of the WeCom call alone: %+v", r)
	}
	u.record(proxiedCall{appid: "wxa1", path: fakewechat.PathSendMessage}, time.Now())
	r, ok := u.report("a", time.Now())
	if !ok || len(r.Paths) != 1 || r.Paths[0].AppID != "wxa1" || len(r.Rids) != 0 {
		t.Errorf("the report %+v (%v): want the app's call alone, no rid", r, ok)
	}
	data, _ := json.Marshal(r)
	if _, err := kv.DecodeUsageReport(data); err != nil {
		t.Errorf("the report does not decode: %v", err)
	}
}
