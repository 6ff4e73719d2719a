package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// answer is one HTTP answer, read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("answer %d is not JSON: %v: %q", a.status, err, a.body)
	}
	return v
}

// errcode is a WeChat-shaped answer's errcode (0 when absent).
func (a answer) errcode(t testing.TB) int {
	t.Helper()
	n, _ := a.json(t)["errcode"].(float64)
	return int(n)
}

// call sends a request and reads its answer whole; redirects are not
// followed.
func call(t testing.TB, ctx context.Context, method, url string, body io.Reader, header ...string) answer {
	t.Helper()
	return callWith(t, ctx, noRedirects, method, url, body, header...)
}

// callWith is call on client.
func callWith(t testing.TB, ctx context.Context, client *http.Client, method, url string, body io.Reader, header ...string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// noRedirects is a client that shows a redirect rather than follow it.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// longLived keeps tokens from rotating during a test.
var longLived = agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: time.Hour}}

func TestAgentAnswersWeChatTokenPathsFromMemory(t *testing.T) {
	sys := startAgentSystem(t, longLived)
	ctx := testenv.Context(t, 30*time.Second)
	calls := sys.Fake.Calls(sys.AppID)
	token := sys.Fake.Current(sys.AppID)
	ticket, _ := sys.Fake.Ticket(sys.AppID, "jsapi")

	root := call(t, ctx, "GET", sys.URL+"/cgi-bin/token?grant_type=client_credential&appid="+sys.AppID+"&secret=the-real-secret", nil)
	if got := root.json(t); got["access_token"] != token || got["expires_in"].(float64) <= 3500 || got["errcode"] != nil {
		t.Errorf("GET /cgi-bin/token = %s, want the current token, expires_in about 3600 and no errcode", root.body)
	}
	prefixed := call(t, ctx, "GET", sys.URL+"/app/"+sys.AppID+"/cgi-bin/token?grant_type=client_credential", nil)
	if prefixed.json(t)["access_token"] != token {
		t.Errorf("GET /app/APPID/cgi-bin/token = %s, want the current token", prefixed.body)
	}
	stable := call(t, ctx, "POST", sys.URL+"/cgi-bin/stable_token",
		strings.NewReader(`{"grant_type":"client_credential","appid":"`+sys.AppID+`","secret":"s","force_refresh":false}`))
	if stable.json(t)["access_token"] != token {
		t.Errorf("POST /cgi-bin/stable_token = %s, want the current token", stable.body)
	}
	for _, url := range []string{
		sys.URL + "/cgi-bin/ticket/getticket?type=jsapi&access_token=" + token,
		sys.URL + "/app/" + sys.AppID + "/cgi-bin/ticket/getticket?type=jsapi&access_token=whatever",
		sys.URL + "//cgi-bin/ticket/getticket?type=jsapi&access_token=" + token, // a base URL ending in "/"
	} {
		got := call(t, ctx, "GET", url, nil).json(t)
		if got["ticket"] != ticket || got["errcode"] != float64(0) || got["expires_in"].(float64) <= 0 {
			t.Errorf("getticket = %v, want the jsapi ticket with errcode 0", got)
		}
	}

	refusals := []struct {
		name, method, url, body string
		errcode                 int
	}{
		{"no appid", "GET", "/cgi-bin/token?grant_type=client_credential", "", 41002},
		{"an unknown appid", "GET", "/cgi-bin/token?appid=wx00000000000000ff", "", 40013},
		{"another appid than the base URL's", "GET", "/app/" + sys.AppID + "/cgi-bin/token?appid=wx00000000000000ff", "", 40013},
		{"stable_token by GET", "GET", "/cgi-bin/stable_token?appid=" + sys.AppID, "", 43002},
		{"stable_token not JSON", "POST", "/cgi-bin/stable_token", "appid=" + sys.AppID, 47001},
		{"a ticket for a foreign token", "GET", "/cgi-bin/ticket/getticket?type=jsapi&access_token=NOT_OURS", "", 40001},
		{"a ticket of no type", "GET", "/cgi-bin/ticket/getticket?access_token=" + token, "", 40097},
		{"a ticket not served", "GET", "/cgi-bin/ticket/getticket?type=wx_card&access_token=" + token, "", 40097},
		{"WeCom's gettoken for an unknown corp", "GET", "/cgi-bin/gettoken?corpid=ww0000000000000000&corpsecret=x", "", 40013},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			got := call(t, ctx, r.method, sys.URL+r.url, strings.NewReader(r.body))
			if got.errcode(t) != r.errcode || !strings.HasPrefix(got.json(t)["errmsg"].(string), "wxtoken agent: ") {
				t.Errorf("%s %s = %d %s, want errcode %d with an errmsg saying it is the agent's", r.method, r.url, got.status, got.body, r.errcode)
			}
		})
	}
	if after := sys.Fake.Calls(sys.AppID); after != calls {
		t.Errorf("the fake WeChat had %d token requests during the test, want none: the agent answers from memory", after-calls)
	}
	sys.stop(t, ctx)
	assertNoToken(t, sys.Agent.output.String(), token, ticket, "the-real-secret")
}

// assertNoToken fails if any secret appears in s.
func assertNoToken(t testing.TB, s string, secrets ...string) {
	t.Helper()
	for _, secret := range secrets {
		if secret != "" && strings.Contains(s, secret) {
			t.Errorf("a token or secret (%.8s...) is in the agent's output", secret)
		}
	}
}

func TestAgentProxyRetriesOnceWithANewTokenAfter40001(t *testing.T) {
	sys := startAgentSystem(t, longLived)
	ctx := testenv.Context(t, 30*time.Second)
	old := sys.Fake.Current(sys.AppID)
	sys.Fake.Revoke(old)

	body := `{"touser":"oFAKE0000000000000000000001","msgtype":"text","text":{"content":"hi"}}`
	got := call(t, ctx, "POST", sys.URL+"/cgi-bin/message/custom/send?access_token="+old, strings.NewReader(body),
		"Content-Type", "application/json", "Authorization", "Bearer must-not-reach-wechat", "Cookie", "session=secret")
	if got.status != http.StatusOK || got.errcode(t) != 0 {
		t.Fatalf("send through the agent after a revocation = %d %s, want errcode 0 (the agent retries with a new token)", got.status, got.body)
	}
	fresh := sys.Fake.Current(sys.AppID)
	last := sys.Fake.LastAPICall(fakewechat.PathSendMessage)
	sum := sha256.Sum256([]byte(body))
	switch ok, rejected := sys.Fake.APICalls(fakewechat.PathSendMessage); {
	case fresh == old:
		t.Fatal("the refresher did not replace the revoked token")
	case ok != 1 || rejected != 1:
		t.Errorf("WeChat saw %d calls that worked and %d rejected, want 1 and 1: one retry", ok, rejected)
	case last.Token != fresh:
		t.Errorf("the retry carried %.8s..., want the new token %.8s...", last.Token, fresh)
	case last.BodySHA256 != hex.EncodeToString(sum[:]):
		t.Errorf("the retry's body differs from the client's")
	case last.Header.Get("Authorization") != "" || last.Header.Get("Cookie") != "":
		t.Errorf("the client's Authorization or Cookie reached WeChat: %v", last.Header)
	case last.Header.Get("Content-Type") != "application/json":
		t.Errorf("Content-Type at WeChat = %q, want the client's", last.Header.Get("Content-Type"))
	}
	// A call that names an older token of ours goes with the current one.
	if got := call(t, ctx, "GET", sys.URL+"/cgi-bin/user/get?access_token="+old, nil); got.json(t)["total"] != float64(2) {
		t.Errorf("user/get with an older token of ours = %s, want the followers", got.body)
	}
	if last := sys.Fake.LastAPICall(fakewechat.PathUserList); last.Token != fresh {
		t.Errorf("user/get went with %.8s..., want the current token", last.Token)
	}
	metrics := call(t, ctx, "GET", sys.URL+"/metrics", nil)
	if !bytes.Contains(metrics.body, []byte("wxtoken_agent_proxy_retries_total 1")) {
		t.Errorf("/metrics does not count the retry:\n%s", grepLines(metrics.body, "wxtoken_agent_"))
	}
	assertNoToken(t, string(metrics.body), old, fresh)
	sys.stop(t, ctx)
	assertNoToken(t, sys.Agent.output.String(), old, fresh)
}

func grepLines(b []byte, s string) string {
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestAgentProxyStreamsLargeBodiesWithoutRetry(t *testing.T) {
	sys := startAgentSystem(t, longLived)
	ctx := testenv.Context(t, 30*time.Second)
	upload := make([]byte, 3<<20) // over the 1 MiB kept for a retry
	rand.Read(upload)
	sum := sha256.Sum256(upload)

	got := call(t, ctx, "POST", sys.URL+"/app/"+sys.AppID+"/cgi-bin/media/upload?type=image", bytes.NewReader(upload),
		"Content-Type", "application/octet-stream")
	if got.status != http.StatusOK || got.json(t)["media_id"] != fmt.Sprintf("MEDIA_%d", len(upload)) {
		t.Fatalf("upload = %d %s, want a media_id", got.status, got.body)
	}
	if last := sys.Fake.LastAPICall(fakewechat.PathUploadMedia); last.BodySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("WeChat received %d bytes that differ from the upload", last.BodyLen)
	}

	// Rejected, a streamed call is not sent again: WeChat's answer is the
	// client's.
	sys.Fake.Revoke(sys.Fake.Current(sys.AppID))
	got = call(t, ctx, "POST", sys.URL+"/app/"+sys.AppID+"/cgi-bin/media/upload?type=image", bytes.NewReader(upload))
	if got.errcode(t) != 40001 {
		t.Errorf("a streamed upload with a revoked token = %s, want WeChat's 40001 unchanged", got.body)
	}
	if ok, rejected := sys.Fake.APICalls(fakewechat.PathUploadMedia); ok != 1 || rejected != 1 {
		t.Errorf("WeChat saw %d uploads that worked and %d rejected, want 1 and 1: no retry", ok, rejected)
	}
}

func TestAgentProxyFollowsNoRedirectAndPassesWeChatsAnswer(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	sys := startAgentSystem(t, agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: time.Hour},
		AgentArgs: []string{"--upstream-timeout", "1s"}})
	ctx := testenv.Context(t, 30*time.Second)
	user := sys.URL + "/app/" + sys.AppID + "/cgi-bin/user/get"

	sys.Fake.FailAPI(fakewechat.PathUserList, fakewechat.Fault{Status: http.StatusFound,
		Header: http.Header{"Location": {other.URL + "/steal"}}, Body: []byte("moved")})
	got := call(t, ctx, "GET", user, nil)
	if got.status != http.StatusFound || string(got.body) != "moved" || elsewhere.Load() != 0 {
		t.Errorf("a redirect from WeChat = %d %q, another host called %d times; want the 302 itself, passed on, and no call", got.status, got.body, elsewhere.Load())
	}

	garbage := []byte("<html>502 Bad Gateway</html>\x00\xff")
	sys.Fake.FailAPI(fakewechat.PathUserList, fakewechat.Fault{Status: http.StatusBadGateway, Body: garbage})
	if got := call(t, ctx, "GET", user, nil); got.status != http.StatusBadGateway || !bytes.Equal(got.body, garbage) {
		t.Errorf("garbage from WeChat = %d %q, want it unchanged", got.status, got.body)
	}

	sys.Fake.FailAPI(fakewechat.PathUserList, fakewechat.Fault{Delay: time.Minute})
	start := time.Now()
	got = call(t, ctx, "GET", user, nil)
	if got.status != http.StatusGatewayTimeout || got.errcode(t) != -1 || !strings.Contains(string(got.body), "did not answer within 1s") {
		t.Errorf("WeChat hanging = %d %s, want 504 with errcode -1 saying so", got.status, got.body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the hanging call took %s to end, want about the 1s --upstream-timeout", d)
	}

	sys.Fake.FailAPI(fakewechat.PathUserList, fakewechat.Fault{Panic: true})
	if got := call(t, ctx, "GET", user, nil); got.status != http.StatusBadGateway || got.errcode(t) != -1 {
		t.Errorf("WeChat dropping the connection = %d %s, want 502 with errcode -1", got.status, got.body)
	}
	sys.Fake.HealAPI(fakewechat.PathUserList)
	if got := call(t, ctx, "GET", user, nil); got.json(t)["total"] != float64(2) {
		t.Errorf("after WeChat healed: %s", got.body)
	}
}

func TestAgentRefusesBadInputAndKeepsServing(t *testing.T) {
	sys := startAgentSystem(t, agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: time.Hour},
		AgentArgs: []string{"--max-body", "2097152", "--body-timeout", "2s"}})
	ctx := testenv.Context(t, 60*time.Second)
	read := sys.URL + "/v1/credentials/" + sys.AppID
	stillServing := func(t *testing.T) {
		t.Helper()
		if got := call(t, ctx, "GET", read, nil); got.status != http.StatusOK {
			t.Errorf("a good read after the bad input = %d %s", got.status, got.body)
		}
	}
	cases := []struct {
		name   string
		method string
		path   string
		body   io.Reader
		header []string
		status int
	}{
		{"a body over --max-body", "POST", "/app/" + sys.AppID + "/cgi-bin/media/upload", bytes.NewReader(make([]byte, 3<<20)), nil, http.StatusRequestEntityTooLarge},
		{"a header of 64 KiB", "GET", "/v1/credentials/" + sys.AppID, nil, []string{"X-Big", strings.Repeat("a", 64<<10)}, http.StatusRequestHeaderFieldsTooLarge},
		{"a URL of 5 KiB", "GET", "/v1/credentials/" + sys.AppID + "?pad=" + strings.Repeat("a", 5<<10), nil, nil, http.StatusRequestURITooLong},
		{"a dot-dot path", "GET", "/cgi-bin/../v1/credentials/" + sys.AppID, nil, nil, http.StatusBadRequest},
		{"an escaped dot-dot", "GET", "/app/" + sys.AppID + "/%2e%2e/%2e%2e/v1/credentials/" + sys.AppID, nil, nil, http.StatusBadRequest},
		{"an escaped slash", "GET", "/app/" + sys.AppID + "%2fcgi-bin/token", nil, nil, http.StatusBadRequest},
		{"a backslash", "GET", "/cgi-bin\\token", nil, nil, http.StatusBadRequest},
		{"an unknown key", "GET", "/v1/credentials/wx00000000000000ff", nil, nil, http.StatusNotFound},
		{"a key that cannot be one", "GET", "/v1/credentials/..%00", nil, nil, http.StatusBadRequest},
		{"an unknown API path", "GET", "/v1/tokens", nil, nil, http.StatusNotFound},
		{"a refresh without a revision", "POST", "/v1/credentials/" + sys.AppID + "/refresh", strings.NewReader("{}"), nil, http.StatusBadRequest},
		{"a refresh by GET", "GET", "/v1/credentials/" + sys.AppID + "/refresh", nil, nil, http.StatusMethodNotAllowed},
		{"a bad wait", "GET", "/v1/credentials/" + sys.AppID + "?wait=soon&after=1", nil, nil, http.StatusBadRequest},
		{"a jssdk config without url", "GET", "/v1/jssdk/" + sys.AppID + "/config", nil, nil, http.StatusBadRequest},
		{"a jssdk config for a relative url", "GET", "/v1/jssdk/" + sys.AppID + "/config?url=/page", nil, nil, http.StatusBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := rawCall(t, ctx, sys.URL, c.method, c.path, c.body, c.header...)
			if got.status != c.status {
				t.Errorf("%s %.80s = %d %.200s, want %d", c.method, c.path, got.status, got.body, c.status)
			}
			stillServing(t)
		})
	}

	t.Run("a client sending a byte a second", func(t *testing.T) {
		addr := strings.TrimPrefix(sys.URL, "http://")
		// Headers never ending (a header line growing a byte a second), and
		// a body of 100 bytes coming a byte a second.
		headers := slowClient(t, addr, "GET /v1/credentials/"+sys.AppID+" HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
		body := slowClient(t, addr, "POST /v1/credentials/"+sys.AppID+"/refresh HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\n{")
		stillServing(t) // while both trickle
		for name, done := range map[string]<-chan time.Duration{"headers": headers, "body": body} {
			select {
			case d := <-done:
				t.Logf("a client trickling its %s was cut off after %s", name, d.Round(time.Second))
			case <-ctx.Done():
				t.Fatalf("a client trickling its %s was never cut off", name)
			}
		}
		stillServing(t)
	})
	sys.stop(t, ctx)
}

// rawCall sends a request line as given (Go's client would clean or
// refuse some of these paths) and reads the answer.
func rawCall(t testing.TB, ctx context.Context, base, method, path string, body io.Reader, header ...string) answer {
	t.Helper()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n", method, path)
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&req, "%s: %s\r\n", header[i], header[i+1])
	}
	var payload []byte
	if body != nil {
		payload, _ = io.ReadAll(body)
		fmt.Fprintf(&req, "Content-Length: %d\r\n", len(payload))
	}
	req.WriteString("\r\n")
	go func() {
		conn.Write(req.Bytes())
		conn.Write(payload) // the agent may answer, and close, before it is all sent
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %.80s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// slowClient sends head at once, then a byte a second, and reports how
// long until the agent closed the connection.
func slowClient(t testing.TB, addr, head string) <-chan time.Duration {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	done := make(chan time.Duration, 1)
	begun := time.Now()
	go func() {
		// The agent answers (408 for a body) and closes, or just closes;
		// the read ends when it has.
		io.Copy(io.Discard, conn)
		done <- time.Since(begun)
		close(closed)
	}()
	go func() {
		for {
			if _, err := conn.Write([]byte{'a'}); err != nil {
				return
			}
			select {
			case <-closed:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return done
}

func TestAgentAuthFileAnswersForbiddenKeysAsUnknown(t *testing.T) {
	const appB = "wx00000000000000b2"
	dir := t.TempDir()
	authFile := filepath.Join(dir, "auth.yaml")
	shopToken, opsToken := "shop-token-0123456789", "ops-token-0123456789"
	opsSum := sha256.Sum256([]byte(opsToken))
	writeFile(t, authFile, fmt.Sprintf(`clients:
  - name: shop
    token: %q
    keys: [%s]
  - name: ops
    token_sha256: %s
    keys: ["*"]
`, shopToken, appA, hex.EncodeToString(opsSum[:])))
	sys := startAgentSystem(t, agentSystemOptions{AppIDs: []string{appA, appB}, Tickets: []string{}, WeChat: fakewechat.Config{ExpiresIn: time.Hour},
		AgentArgs: []string{"--auth-file", authFile}})
	ctx := testenv.Context(t, 30*time.Second)
	bearer := func(token string) []string { return []string{"Authorization", "Bearer " + token} }

	if got := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+appA, nil); got.status != http.StatusUnauthorized {
		t.Errorf("no token = %d, want 401", got.status)
	}
	if got := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+appA, nil, bearer("wrong-token-0123456789")...); got.status != http.StatusUnauthorized {
		t.Errorf("a wrong token = %d, want 401", got.status)
	}
	if got := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+appA, nil, bearer(shopToken)...); got.status != http.StatusOK {
		t.Errorf("shop reading its key = %d %s", got.status, got.body)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", sys.URL+"/v1/credentials/"+appB, nil)
	req.SetBasicAuth("ops", opsToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("ops with HTTP Basic reading any key: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	if got := call(t, ctx, "GET", sys.URL+"/healthz", nil); got.status != http.StatusOK {
		t.Errorf("/healthz needs no token: %d", got.status)
	}

	// A key shop may not use answers exactly as one that does not exist.
	for _, p := range []struct{ forbidden, unknown string }{
		{"/v1/credentials/" + appB, "/v1/credentials/wx00000000000000ff"},
		{"/cgi-bin/token?appid=" + appB, "/cgi-bin/token?appid=wx00000000000000ff"},
		{"/app/" + appB + "/cgi-bin/user/get", "/app/wx00000000000000ff/cgi-bin/user/get"},
		{"/cgi-bin/user/get?access_token=" + sys.Fake.Current(appB), "/cgi-bin/user/get?access_token=NOT_OURS"},
	} {
		forbidden := call(t, ctx, "GET", sys.URL+p.forbidden, nil, bearer(shopToken)...)
		unknown := call(t, ctx, "GET", sys.URL+p.unknown, nil, bearer(shopToken)...)
		scrub := func(b []byte, key string) string { return strings.ReplaceAll(string(b), key, "KEY") }
		if forbidden.status != unknown.status || scrub(forbidden.body, appB) != scrub(unknown.body, "wx00000000000000ff") {
			t.Errorf("shop asking for %s = %d %s\nbut for %s = %d %s: a forbidden key must answer as an unknown one",
				p.forbidden, forbidden.status, forbidden.body, p.unknown, unknown.status, unknown.body)
		}
	}
	// With the one app shop may use, a call naming no token is its.
	if got := call(t, ctx, "GET", sys.URL+"/cgi-bin/user/get", nil, bearer(shopToken)...); got.json(t)["total"] != float64(2) {
		t.Errorf("shop's call with no access_token = %s, want its one app's", got.body)
	}
	if last := sys.Fake.LastAPICall(fakewechat.PathUserList); last.Token != sys.Fake.Current(appA) {
		t.Error("shop's call went with another app's token")
	}
	sys.stop(t, ctx)
	assertNoToken(t, sys.Agent.output.String(), shopToken, opsToken, sys.Fake.Current(appA), sys.Fake.Current(appB))
}

func TestAgentRefusesToServeTheNetworkUnguarded(t *testing.T) {
	ctx := testenv.Context(t, 20*time.Second)
	p := startWxtoken(t, "agent", nil, "agent", "--listen", "0.0.0.0:0", "--nats-url", "nats://127.0.0.1:1")
	if code := p.wait(t, ctx); code != 2 || !strings.Contains(p.output.String(), "not a loopback address") {
		t.Errorf("agent --listen 0.0.0.0:0 exited %d: %s; want 2 and why", code, p.output.String())
	}
}

func TestAgentServesAUnixSocket(t *testing.T) {
	sys := startAgentRefresher(t, testenv.Context(t, 60*time.Second), longLived)
	ctx := testenv.Context(t, 30*time.Second)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	writeFile(t, sock, "") // not a socket: refused
	p := startWxtoken(t, "agent", nil, "agent", "--nats-url", sys.NATSURL, "--listen", "unix:"+sock)
	if code := p.wait(t, ctx); code != 2 || !strings.Contains(p.output.String(), "is not a socket") {
		t.Fatalf("agent on a file that is not a socket exited %d: %s", code, p.output.String())
	}
	os.Remove(sock)
	sys.Agent = startWxtoken(t, "agent", nil, "agent", "--nats-url", sys.NATSURL, "--listen", "unix:"+sock)
	sys.Agent.waitOutput(t, ctx, "agent ready")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("the socket's mode = %v (%v), want 0660", fi.Mode(), err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://agent/v1/credentials/" + sys.AppID + "?format=text")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != sys.Fake.Current(sys.AppID) {
		t.Errorf("the token over the socket = %q, want the current one", b)
	}
	sys.stop(t, ctx)
}

func TestAgentDrainsLongPollsOnSIGTERM(t *testing.T) {
	sys := startAgentSystem(t, longLived)
	ctx := testenv.Context(t, 30*time.Second)
	first := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+sys.AppID, nil)
	polled := make(chan answer, 1)
	go func() {
		polled <- call(t, ctx, "GET", sys.URL+"/v1/credentials/"+sys.AppID+"?wait=60", nil, "If-None-Match", first.header.Get("ETag"))
	}()
	waitForPoll(t, ctx, sys)
	start := time.Now()
	if err := sys.Agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-polled:
		if got.status != http.StatusNotModified {
			t.Errorf("a long poll at SIGTERM = %d, want 304 at once", got.status)
		}
	case <-ctx.Done():
		t.Fatal("the long poll was not answered at SIGTERM")
	}
	if code := sys.Agent.wait(t, ctx); code != 0 {
		t.Errorf("agent exited %d after SIGTERM, want 0", code)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("draining took %s", d)
	}
}

// waitForPoll waits until the agent has a long poll waiting, as its
// metrics say.
func waitForPoll(t *testing.T, ctx context.Context, sys *agentSystem) {
	t.Helper()
	for {
		if got := call(t, ctx, "GET", sys.URL+"/metrics", nil); bytes.Contains(got.body, []byte("\nwxtoken_agent_long_polls 1\n")) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("the agent never had the long poll waiting")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestAgentWaitsForTheSuccessorOfAnExpiredTicket: WeChat gives the same
// ticket until it expires, so the refresher replaces one only then; a read
// in the second between gets the successor, not an error.
//
// The refresher (in this process) and the fake WeChat run on a clock an
// hour and 30 s behind the agent's, the wall's: the hour-long ticket they
// hold is valid to them and has expired by the agent's clock. Moving their
// clock past its expiry has the refresher replace it: a read the agent
// holds meanwhile gets the successor.
func TestAgentWaitsForTheSuccessorOfAnExpiredTicket(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	var clock shiftedClock
	clock.offset.Store(int64(-(time.Hour + 30*time.Second)))
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 4 * time.Hour, TicketExpiresIn: time.Hour, Now: clock.now})
	apps := testenv.Apps(fake, appA)
	apps[0].Tickets = []publisher.Ticket{publisher.TicketJSAPI}
	key := kv.Key(appA, kv.KindJSAPITicket)
	tickets := testenv.Entries(t, openBucket(t, ctx, nc), key)
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: wechatURL, Schedule: "@every 1s",
		Clock: publisher.Clock{Now: clock.now, AfterFunc: clock.afterFunc}})
	first := testenv.Next(t, ctx, tickets)
	if expires := testenv.Record(t, first).ExpiresAt; time.Now().Before(expires) {
		t.Fatalf("the first ticket expires at %s, want it expired by the agent's clock", expires)
	}
	sys := &agentSystem{NATSURL: srv.ClientURL(), WeChatURL: wechatURL}
	sys.startAgent(t, ctx)

	clock.offset.Store(int64(time.Second)) // the ticket has expired for the refresher too
	got := call(t, ctx, "GET", sys.URL+"/v1/credentials/"+key, nil)
	var next struct {
		Revision  uint64    `json:"revision"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	decodeJSON(t, got.body, &next)
	if got.status != http.StatusOK || next.Revision <= first.Revision() || !time.Now().Before(next.ExpiresAt) {
		t.Errorf("a read as the ticket expired = %d %s, want its successor (revision > %d)", got.status, got.body, first.Revision())
	}
}

// TestAgentKeepAliveOutlivesALongPoll: a long poll lasting past
// --body-timeout leaves its connection fit for the next requests.
func TestAgentKeepAliveOutlivesALongPoll(t *testing.T) {
	sys := startAgentSystem(t, agentSystemOptions{WeChat: fakewechat.Config{ExpiresIn: time.Hour},
		AgentArgs: []string{"--body-timeout", "1s", "--max-wait", "2s"}})
	ctx := testenv.Context(t, 30*time.Second)
	var dials atomic.Int32
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}}
	do := func(method, path string, body io.Reader, header ...string) answer {
		return callWith(t, ctx, client, method, sys.URL+path, body, header...)
	}
	first := do("GET", "/v1/credentials/"+sys.AppID, nil)
	if got := do("GET", "/v1/credentials/"+sys.AppID+"?wait=2", nil, "If-None-Match", first.header.Get("ETag")); got.status != http.StatusNotModified {
		t.Fatalf("the long poll = %d", got.status)
	}
	if got := do("GET", "/app/"+sys.AppID+"/cgi-bin/user/get", nil); got.status != http.StatusOK || !bytes.Contains(got.body, []byte(`"total":2`)) {
		t.Errorf("a proxied call after the long poll, on its connection = %d %q, want WeChat's answer", got.status, got.body)
	}
	if got := do("POST", "/v1/credentials/"+sys.AppID+"/refresh", strings.NewReader(fmt.Sprintf(`{"stale_revision":%s}`, strings.Trim(first.header.Get("ETag"), `"`)))); got.status != http.StatusOK {
		t.Errorf("a refresh after the long poll, on its connection = %d %s", got.status, got.body)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections for the three requests, want one kept alive", n)
	}
}
