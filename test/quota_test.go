package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// TestStatusQuotaShowsReadingsAndForeignFetch: a leader with a short
// --quota-every reads the app's token path; another party fetches a
// token; `wxtoken status --quota` then shows the path's limit, used,
// remaining, ours and others, and the foreign fetch.
func TestStatusQuotaShowsReadingsAndForeignFetch(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	failed, err := nc.SubscribeSync(kv.Subjects{}.Failed(appA))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url, QuotaEvery: 200 * time.Millisecond,
		UpstreamTimeout: time.Second})
	b := testenv.Bucket(t, ctx, nc)
	awaitEndpoint(t, ctx, nc, appA)
	// A ledger begun a moment ago sets the day's baseline (for twice
	// --upstream-timeout): the other party fetches once a reading after
	// that was taken.
	awaitReadingPastBaseline(t, ctx, b, appA)

	var answer struct {
		AccessToken string `json:"access_token"`
	}
	getJSON(t, url+"/cgi-bin/token?grant_type=client_credential&appid="+appA+"&secret=secret-of-"+appA, &answer)
	if answer.AccessToken == "" {
		t.Fatal("another party's fetch got no token")
	}
	ev, _ := nextEvent[kv.FailureEvent](t, ctx, failed)
	if ev.Class != kv.ClassForeignFetch || ev.Path != "/cgi-bin/token" {
		t.Fatalf("failure event %+v; want foreign_fetch of /cgi-bin/token", ev)
	}

	out, errOut, code := runWxtoken(t, []string{"NATS_URL=" + srv.ClientURL()}, "status", "--quota")
	if code != 0 || !strings.Contains(out, "quota per API path") {
		t.Fatalf("status --quota (exit %d) has no quota table:\n%s%s", code, out, errOut)
	}
	var reading, foreign []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 8 && f[0] == appA && f[1] == "/cgi-bin/token":
			reading = f
		case len(f) >= 7 && f[0] == appA && strings.Contains(line, "/cgi-bin/token") && strings.Contains(line, " ago ("):
			foreign = f
		}
	}
	// LIMIT USED REMAINING OURS OTHERS: the fake's 2000 a day; ours 1 or 2
	// (the rotation the foreign fetch caused, once read), the other's 1.
	if len(reading) < 8 || reading[2] != "2000" || reading[6] != "1" {
		t.Errorf("status --quota's reading of the token path: %q; want limit 2000, others 1\n%s", reading, out)
	}
	if len(foreign) < 7 || foreign[len(foreign)-2] != "1" || foreign[len(foreign)-1] != "1" {
		t.Errorf("status --quota's foreign fetch: %q; want 1 other call, seen once\n%s", foreign, out)
	}
}

// awaitReadingPastBaseline waits for a quota reading of appid's token path
// taken after its new ledger's baseline was set: in a ledger's first
// moments (twice --upstream-timeout, 1 s in these tests), a call by
// another party counts in the day's baseline, not as theirs.
func awaitReadingPastBaseline(t *testing.T, ctx context.Context, b jetstream.KeyValue, appid string) {
	t.Helper()
	ledgers := testenv.Entries(t, b, kv.LedgerKey(appid))
	var settled time.Time
	for {
		l, err := kv.DecodeLedger(appid, testenv.Next(t, ctx, ledgers).Value())
		if err != nil {
			t.Fatal(err)
		}
		if settled.IsZero() {
			settled = l.Since.Add(2 * time.Second)
		}
		if l.Quota["/cgi-bin/token"].At.After(settled) {
			return
		}
	}
}
