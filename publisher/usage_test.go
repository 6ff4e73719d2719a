package publisher

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// TestOneUsageReportFeedsThePollerAndTheRidLookups: one agent's usage
// report, taken in by the refresher's one subscription to the usage
// subject, reaches both that read it: the quota poller asks quota/get
// about the API path it names, and the rid lookups look up the rid of the
// refusal it carries.
func TestOneUsageReportFeedsThePollerAndTheRidLookups(t *testing.T) {
	ctx := quotaContext(t)
	f := newQuotaFixture(t, fakewechat.Config{})
	leader := f.lead(t, ctx, "leader")
	held := f.awaitToken(t, ctx, "")

	// The agent's proxy sent a message WeChat refused, its quota spent.
	f.fake.SetQuotaLimit(quotaApp, fakewechat.PathSendMessage, 0)
	resp, err := http.Post(f.wechat.URL+fakewechat.PathSendMessage+"?access_token="+held.Value, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var answer wechaterr.Answer
	json.Unmarshal(data, &answer)
	rid, ok := wechaterr.Rid(answer.ErrMsg)
	if answer.ErrCode != 45009 || !ok {
		t.Fatalf("the fake answered %s, want a 45009 with a rid", data)
	}
	report, _ := json.Marshal(kv.UsageReport{Agent: "agent-1", At: time.Now(),
		Paths: []kv.PathUsage{{AppID: quotaApp, Path: fakewechat.PathSendMessage, Calls: 1, Errors: map[string]int64{"quota": 1}}},
		Rids:  []kv.RidSeen{{AppID: quotaApp, Path: fakewechat.PathSendMessage, ErrCode: 45009, Rid: rid, At: time.Now().UTC()}}})
	if err := f.nc.Publish(kv.Subjects{}.Usage(), report); err != nil {
		t.Fatal(err)
	}

	// The path issues none of the app's tokens: only the report names it.
	f.awaitReading(t, ctx, fakewechat.PathSendMessage, time.Time{}, anyReading)
	leader.logs.await(t, ctx, "rid="+rid, 1)
	if n := strings.Count(leader.logs.String(), "WeChat refused a call an agent forwarded"); n != 1 {
		t.Errorf("%d lookups of the agent's rid logged; want 1:\n%s", n, leader.logs.String())
	}
}
