package test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

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
