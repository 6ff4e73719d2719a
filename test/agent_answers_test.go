package test

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// errorOf returns the code and message of the agent API's error answer.
func errorOf(t testing.TB, a answer) (code, message string) {
	t.Helper()
	e, ok := a.json(t)["error"].(map[string]any)
	if !ok {
		t.Fatalf("answer %d has no error object: %s", a.status, a.body)
	}
	code, _ = e["code"].(string)
	message, _ = e["message"].(string)
	return code, message
}

// TestAgentJSSDKRefusesAnUnencodedPageURL: a page URL with a query of its
// own, given without url-encoding, reaches the agent cut at its first "&",
// and a wx.config signed for that fails in the browser with "invalid
// signature". The agent refuses it, naming the parameters it did not
// expect, and signs the whole URL once it is encoded. A ticket's key in
// the path is refused with the path to use.
func TestAgentJSSDKRefusesAnUnencodedPageURL(t *testing.T) {
	sys := startAgentSystem(t, longLived)
	ctx := testenv.Context(t, 30*time.Second)
	const page = "https://shop.example.com/pay?order=42&from=menu"
	config := "/v1/jssdk/" + sys.AppID + "/config"

	refusals := []struct {
		name, path string
		want       []string // in the message
	}{
		{"config, the URL not encoded", config + "?url=" + page, []string{"url-encode the page URL", `"from"`}},
		{"agent-config, the URL not encoded", "/v1/jssdk/" + sys.AppID + "/agent-config?url=" + page + "&utm_source=x",
			[]string{"url-encode the page URL", `"from"`, `"utm_source"`}},
		{"a + not encoded, arrived as a space", config + "?url=https://shop.example.com/s?q=a+b", []string{"url-encode the page URL"}},
		{"url given twice", config + "?url=" + url.QueryEscape(page) + "&url=" + url.QueryEscape(page), []string{"url-encode the page URL"}},
		{"a ticket's key", "/v1/jssdk/" + sys.AppID + ".jsapi_ticket/config?url=" + url.QueryEscape(page), []string{config}},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			got := call(t, ctx, "GET", sys.URL+r.path, nil)
			code, message := errorOf(t, got)
			if got.status != http.StatusBadRequest || code != "bad_request" {
				t.Errorf("GET %s = %d %s, want 400 bad_request", r.path, got.status, got.body)
			}
			for _, want := range r.want {
				if !strings.Contains(message, want) {
					t.Errorf("GET %s: the message %q does not say %q", r.path, message, want)
				}
			}
		})
	}

	var signed jssdk.Config
	got := call(t, ctx, "GET", sys.URL+config+"?url="+url.QueryEscape(page), nil)
	if got.status != http.StatusOK {
		t.Fatalf("GET %s with the URL encoded = %d %s, want 200", config, got.status, got.body)
	}
	decodeJSON(t, got.body, &signed)
	ticket, _ := sys.Fake.Ticket(sys.AppID, "jsapi")
	if want := jssdk.Signature(ticket, signed.NonceStr, signed.Timestamp, page); signed.Signature != want {
		t.Errorf("the encoded URL was signed as %s, want %s, the signature of %s whole", signed.Signature, want, page)
	}
}

// TestAgentRateLimitedAnswerNamesTheValueAndWhenToRetry: a forced refresh
// within --min-force-interval of the last is answered 429 with the value
// held (its revision and expiry, as the refresher's NATS reply names them)
// and Retry-After, the seconds until a forced refresh may go again. The
// agent's error messages are the refresher's own words, without the
// prefixes of the packages they passed through.
func TestAgentRateLimitedAnswerNamesTheValueAndWhenToRetry(t *testing.T) {
	sys := startAgentSystem(t, agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: time.Hour},
		RefresherEnv: []string{"WXTOKEN_MIN_FORCE_INTERVAL=30s"}, AgentArgs: []string{"--refresh-timeout", "3s"}})
	ctx := testenv.Context(t, 30*time.Second)
	refresh := func(stale uint64) answer {
		return call(t, ctx, "POST", sys.URL+"/v1/credentials/"+sys.AppID+"/refresh",
			strings.NewReader(fmt.Sprintf(`{"stale_revision":%d}`, stale)), "Content-Type", "application/json")
	}
	held := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+sys.AppID, nil).json(t)
	sys.Fake.Revoke(held["value"].(string))
	first := refresh(uint64(held["revision"].(float64)))
	if first.status != http.StatusOK || first.json(t)["refreshed"] != true {
		t.Fatalf("the first forced refresh = %d %s, want 200 refreshed", first.status, first.body)
	}
	fresh := first.json(t)
	revision := uint64(fresh["revision"].(float64))

	forcedAt := time.Now()
	got := refresh(revision)
	code, message := errorOf(t, got)
	body := got.json(t)
	if got.status != http.StatusTooManyRequests || code != "rate_limited" {
		t.Fatalf("a second forced refresh within 30s = %d %s, want 429 rate_limited", got.status, got.body)
	}
	if want := "a forced refresh of " + sys.AppID + " ran "; !strings.HasPrefix(message, want) || !strings.HasSuffix(message, "; at most one per 30s") {
		t.Errorf("the message %q, want the refresher's own: %q...; at most one per 30s", message, want)
	}
	if body["key"] != sys.AppID || body["revision"] != float64(revision) || body["expires_at"] != fresh["expires_at"] {
		t.Errorf("the 429 names %v %v %v, want key %s, revision %d and expires_at %v: the value held",
			body["key"], body["revision"], body["expires_at"], sys.AppID, revision, fresh["expires_at"])
	}
	retry, err := strconv.Atoi(got.header.Get("Retry-After"))
	if upTo := 30 - int(time.Since(forcedAt).Seconds()); err != nil || retry < upTo-2 || retry > 30 {
		t.Errorf("Retry-After %q, want the seconds left of the 30s since the last forced refresh (%d to 30)",
			got.header.Get("Retry-After"), upTo-2)
	}

	// No refresher: the agent says so, in its own words.
	if err := sys.Refresher.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sys.Refresher.wait(t, ctx)
	got = refresh(revision)
	code, message = errorOf(t, got)
	if got.status != http.StatusServiceUnavailable || code != "unavailable" || !strings.HasPrefix(message, "no refresher answered within 3s") {
		t.Errorf("a refresh with no refresher = %d %s, want 503 unavailable saying no refresher answered within 3s", got.status, got.body)
	}
	for _, a := range []answer{first, got} {
		if strings.Contains(string(a.body), "subscriber:") || strings.Contains(string(a.body), "publisher:") {
			t.Errorf("an answer shows a package's prefix: %s", a.body)
		}
	}
}
