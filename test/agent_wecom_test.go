package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestAgentAsNATSConfServiceUserServesWeComAndNewKeys runs the refresher
// and the agent as nats.conf's refresher and service users, with an
// official account and two WeCom apps of one corp: the agent discovers
// every key, serves WeCom's token paths and JS-SDK configs of both
// platforms, forwards WeCom calls to the WeCom base, and takes in an app
// added to the refresher's apps file later.
func TestAgentAsNATSConfServiceUserServesWeComAndNewKeys(t *testing.T) {
	const corp, appB = "ww00000000000000c1", "wx00000000000000b2"
	ctx := testenv.Context(t, 60*time.Second)
	srv := rolesServer(t)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{ExpiresIn: time.Hour})
	var atWeCom atomic.Int32
	wecom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == fakewechat.PathUserList {
			atWeCom.Add(1)
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(wecom.Close)
	fake.AddApp(appA, "secret-a")
	fake.AddApp(appB, "secret-b")
	fake.AddWeComApp(corp, "1000002", "secret-w2")
	fake.AddWeComApp(corp, "1000003", "secret-w3")
	apps := `apps:
  - appid: ` + appA + `
    secret_env: SECRET_A
    tickets: [jsapi]
  - corpid: ` + corp + `
    agent: "1000002"
    secret_env: SECRET_W2
    tickets: [jsapi, agent_config]
  - corpid: ` + corp + `
    agent: "1000003"
    secret_env: SECRET_W3
`
	appsFile := filepath.Join(t.TempDir(), "apps.yaml")
	writeFile(t, appsFile, apps)
	refresher := startWxtoken(t, "refresher", []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=refresher", "NATS_PASSWORD=" + passwords["refresher"],
		"WECHAT_BASE_URL=" + wechatURL, "WECOM_BASE_URL=" + wecom.URL, "WXTOKEN_APPS=" + appsFile,
		"SECRET_A=secret-a", "SECRET_B=secret-b", "SECRET_W2=secret-w2", "SECRET_W3=secret-w3"}, "serve", "--instance", "refresher")
	// Every key written before the agent lists them: it is ready once it
	// holds each key it found.
	admin := connectAs(t, srv, "admin").nc
	bucket := testenv.Bucket(t, ctx, admin)
	for _, key := range []string{appA, kv.Key(appA, kv.KindJSAPITicket), kv.WeComKey(corp, "1000002"), kv.WeComKey(corp, "1000003"),
		kv.Key(kv.WeComKey(corp, "1000002"), kv.KindJSAPITicket), kv.Key(kv.WeComKey(corp, "1000002"), kv.KindAgentConfigTicket)} {
		testenv.Next(t, ctx, testenv.Entries(t, bucket, key))
	}

	agentProc := startWxtoken(t, "agent", []string{"NATS_URL=" + srv.ClientURL(), "NATS_USER=service", "NATS_PASSWORD=" + passwords["service"]},
		"agent", "--listen", "127.0.0.1:0", "--wechat-base-url", wechatURL, "--wecom-base-url", wecom.URL)
	agentProc.waitOutput(t, ctx, "agent listening")
	base := "http://" + listenAddr(t, agentProc.output.String())
	awaitReady(t, ctx, agentProc, base+"/readyz")

	w2, w3 := kv.WeComKey(corp, "1000002"), kv.WeComKey(corp, "1000003")
	w2Token := fake.Current(w2)
	if got := call(t, ctx, "GET", base+"/app/"+w2+"/cgi-bin/gettoken?corpid="+corp+"&corpsecret=ignored", nil).json(t); got["access_token"] != w2Token || got["errcode"] != float64(0) {
		t.Errorf("gettoken under /app/%s/ = %v, want its token with errcode 0", w2, got)
	}
	if got := call(t, ctx, "GET", base+"/cgi-bin/gettoken?corpid="+corp+"&corpsecret=ignored", nil); got.errcode(t) != 40013 || !strings.Contains(string(got.body), "several apps") {
		t.Errorf("gettoken naming only a corp of two apps = %s, want 40013 saying to name one", got.body)
	}
	corpTicket, _ := fake.Ticket(w2, "jsapi")
	agentTicket, _ := fake.Ticket(w2, "agent_config")
	if got := call(t, ctx, "GET", base+"/cgi-bin/get_jsapi_ticket?access_token="+w2Token, nil).json(t); got["ticket"] != corpTicket {
		t.Errorf("get_jsapi_ticket = %v, want the corp's ticket", got)
	}
	if got := call(t, ctx, "GET", base+"/cgi-bin/ticket/get?&type=agent_config&access_token="+w2Token, nil).json(t); got["ticket"] != agentTicket {
		t.Errorf("ticket/get?type=agent_config = %v, want the app's ticket", got)
	}
	if got := call(t, ctx, "GET", base+"/cgi-bin/ticket/getticket?type=jsapi&access_token="+w2Token, nil); got.errcode(t) != 40097 {
		t.Errorf("WeChat's getticket with a WeCom token = %s, want 40097", got.body)
	}

	const page = "https://example.com/page?x=1"
	var cfg jssdk.AgentConfig
	decodeJSON(t, call(t, ctx, "GET", base+"/v1/jssdk/"+w2+"/agent-config?url="+page, nil).body, &cfg)
	if cfg.CorpID != corp || cfg.AgentID != "1000002" || cfg.Signature != jssdk.Signature(agentTicket, cfg.NonceStr, cfg.Timestamp, page) {
		t.Errorf("agent-config = %+v, want corp %s, agent 1000002, signed with the agent_config ticket", cfg, corp)
	}
	var wx jssdk.Config
	jsapiA, _ := fake.Ticket(appA, "jsapi")
	decodeJSON(t, call(t, ctx, "GET", base+"/v1/jssdk/"+appA+"/config?url="+page+"%23frag", nil).body, &wx)
	if wx.AppID != appA || wx.Signature != jssdk.Signature(jsapiA, wx.NonceStr, wx.Timestamp, page) {
		t.Errorf("config = %+v, want %s's, signed for the page without its fragment", wx, appA)
	}
	if got := call(t, ctx, "GET", base+"/v1/jssdk/"+w3+"/agent-config?url="+page, nil); got.status != http.StatusNotFound {
		t.Errorf("agent-config of an app with no such ticket = %d %s, want 404", got.status, got.body)
	}

	if got := call(t, ctx, "GET", base+"/cgi-bin/user/get?access_token="+fake.Current(w3), nil); got.json(t)["total"] != float64(2) || atWeCom.Load() != 1 {
		t.Errorf("a WeCom call = %s, and %d calls reached the WeCom base; want it forwarded there", got.body, atWeCom.Load())
	}
	if last := fake.LastAPICall(fakewechat.PathUserList); last.Token != fake.Current(w3) {
		t.Errorf("the WeCom call went with another token")
	}

	// An app added to the refresher's apps file is served without a restart.
	writeFile(t, appsFile, apps+"  - appid: "+appB+"\n    secret_env: SECRET_B\n")
	if err := refresher.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	agentProc.waitOutput(t, ctx, fmt.Sprintf("key=%s revision=", appB))
	if got := call(t, ctx, "GET", base+"/v1/credentials/"+appB+"?format=text", nil); string(got.body) != fake.Current(appB) {
		t.Errorf("the new app's token through the agent = %d %q, want the fake's", got.status, got.body)
	}
}

func decodeJSON(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %q", err, b)
	}
}
