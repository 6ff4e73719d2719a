package test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestAnAgentsRefusedCallIsLookedUpByTheLeader, with the refresher and
// the agent as processes: the day's limit on user/get is spent, a service's
// call through the agent gets WeChat's 45009 with a rid, the agent's next
// report (every 200ms) carries it, and the leader logs WeChat's record of
// the call: the app, path, errcode and the IP WeChat saw it from. No
// failure event is published for it.
func TestAnAgentsRefusedCallIsLookedUpByTheLeader(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startAgentSystem(t, agentSystemOptions{Tickets: []string{}, AgentArgs: []string{"--usage-every", "200ms"}})
	failed, err := sys.NC.SubscribeSync(kv.Subjects{}.Failed(">"))
	if err != nil {
		t.Fatal(err)
	}
	sys.Fake.SetQuotaLimit(sys.AppID, fakewechat.PathUserList, 0)

	resp, err := http.Get(sys.URL + fakewechat.PathUserList)
	if err != nil {
		t.Fatal(err)
	}
	var answer wechaterr.Answer
	json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	rid, ok := wechaterr.Rid(answer.ErrMsg)
	if answer.ErrCode != 45009 || !ok {
		t.Fatalf("the call through the agent answered %+v, want a 45009 with a rid", answer)
	}
	// The leader's WARN line of that rid, in text form: key=value pairs.
	var found string
	line := regexp.MustCompile(`WeChat refused a call an agent forwarded.*`)
	sys.Refresher.waitUntil(t, ctx, "the leader's WARN line of rid "+rid, func(out string) bool {
		for _, l := range line.FindAllString(out, -1) {
			if strings.Contains(l, "rid="+rid) {
				found = l
				return true
			}
		}
		return false
	})
	for _, want := range []string{"appid=" + sys.AppID, "path=" + fakewechat.PathUserList, "errcode=45009", "client_ip=127.0.0.1", "invoke_time=", "cost_in_ms="} {
		if !strings.Contains(found, want) {
			t.Errorf("the line %q has no %s", found, want)
		}
	}
	sys.NC.Flush()
	if msg, err := failed.NextMsg(0); err == nil {
		t.Errorf("a failure event was published: %s", msg.Data)
	}
}
