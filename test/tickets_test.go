package test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// ticketApps registers appids at the fake and returns them with both
// tickets.
func ticketApps(fake *fakewechat.Server, appids ...string) []publisher.App {
	apps := testenv.Apps(fake, appids...)
	for i := range apps {
		apps[i].Tickets = []publisher.Ticket{publisher.TicketJSAPI, publisher.TicketWxCard}
	}
	return apps
}

// ticket decodes a ticket entry, failing the test if it is not one: a
// ticket record whose appid and kind name its key.
func ticket(t *testing.T, e jetstream.KeyValueEntry) kv.Credential {
	t.Helper()
	if _, kind := kv.SplitKey(e.Key()); kind == kv.KindToken {
		t.Fatalf("%s revision %d is no ticket's key", e.Key(), e.Revision())
	}
	rec, err := kv.DecodeCredential(e.Key(), e.Value())
	if err != nil {
		t.Fatalf("%s revision %d: %v", e.Key(), e.Revision(), err)
	}
	return rec
}

// TestTicketsAreKeptBesideTheirToken: an app with tickets gets each under
// "<appid>.<kind>", as the fake issued it, announced like a token and
// fetched with a working token.
func TestTicketsAreKeptBesideTheirToken(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	b := openBucket(t, ctx, nc)
	jsapi := testenv.Entries(t, b, appA+".jsapi_ticket")
	card := testenv.Entries(t, b, appA+".wx_card_ticket")
	rotated, err := nc.SubscribeSync(kv.Subjects{}.Rotated(appA + ".jsapi_ticket"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Refresher(t, nc, publisher.Config{Apps: ticketApps(fake, appA), UpstreamURL: url})

	for typ, ch := range map[string]<-chan jetstream.KeyValueEntry{"jsapi": jsapi, "wx_card": card} {
		rec := ticket(t, testenv.Next(t, ctx, ch))
		want, valid := fake.Ticket(appA, typ)
		if rec.Value != want || !valid || rec.Key != kv.Key(appA, typ+"_ticket") {
			t.Errorf("%s: stored %+v, want the fake's valid %s ticket", typ, rec, typ)
		}
		// Counted from the fetch that first saw it: no later than WeChat's
		// expiry, and earlier by no more than the second fetched_at is
		// cut by and the call's time.
		if real := fake.TicketExpiresAt(appA, typ); rec.ExpiresAt.After(real) || real.Sub(rec.ExpiresAt) > 2*time.Second {
			t.Errorf("%s: record expires %s, WeChat's ticket %s", typ, rec.ExpiresAt, real)
		}
		if _, _, dead := fake.TicketCalls(appA, typ); dead != 0 {
			t.Errorf("%s: %d ticket calls with a dead token", typ, dead)
		}
	}
	ev, _ := nextEvent[kv.RotationEvent](t, ctx, rotated)
	if ev.AppID != appA || ev.Kind != kv.KindJSAPITicket {
		t.Errorf("rotation event %+v, want appid %s and kind jsapi_ticket", ev, appA)
	}
	reply := request(t, ctx, nc, appA+".jsapi_ticket", kv.RefreshRequest{})
	if reply.Error != nil || reply.AppID != appA || reply.Kind != kv.KindJSAPITicket || reply.Revision == 0 {
		t.Errorf("refresh endpoint for the ticket key: %+v", reply)
	}
}

// TestTicketsAcrossTokenRotationsNeverUseADeadToken: a thousand ticket
// rotations of 200 apps, across token rotations (tokens and tickets living
// 12 s and 8 s), each ticket asked for with a working token, stored only
// when its value changes, with its expiry counted from its first
// appearance and never later than WeChat's.
//
// The lifetimes are what a busy 2-core CI machine needs under -race: at
// 3 s and 2 s the 600 credentials asked for 530 rotations a second, each
// a count, a call and a write; the loop fell behind by seconds, tokens
// died before their rotation ran, and hundreds of ticket calls carried a
// dead one (at 6 s and 4 s, 2 runs in 20 still had 9 and 53).
func TestTicketsAcrossTokenRotationsNeverUseADeadToken(t *testing.T) {
	const apps, rotations = 200, 3
	ctx := testenv.Context(t, 120*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{ExpiresIn: 12 * time.Second, TicketExpiresIn: 8 * time.Second})
	ids := make([]string, apps)
	for i := range ids {
		ids[i] = fmt.Sprintf("wxt%015d", i)
	}
	b := openBucket(t, ctx, nc)
	all := testenv.Entries(t, b, ">")
	testenv.Refresher(t, nc, publisher.Config{Apps: ticketApps(fake, ids...), UpstreamURL: url, UpstreamRate: 2000})

	seen := map[string]map[string]bool{} // key -> ticket values stored
	tickets := 0
	for tickets < max(apps*2*rotations, 1000) {
		e := testenv.Next(t, ctx, all)
		appid, kind := kv.SplitKey(e.Key())
		if kind == kv.KindToken || kv.ValidateKey(e.Key()) != nil {
			continue // a token, or no credential (an app's ledger)
		}
		rec := ticket(t, e)
		tickets++
		if seen[e.Key()] == nil {
			seen[e.Key()] = map[string]bool{}
		}
		if seen[e.Key()][rec.Value] {
			t.Fatalf("%s: the same ticket stored twice: a repeated value must write nothing", e.Key())
		}
		seen[e.Key()][rec.Value] = true
		typ := kind[:len(kind)-len("_ticket")]
		if current, _ := fake.Ticket(appid, typ); current == rec.Value {
			// Counted from its first appearance: never past WeChat's expiry.
			if real := fake.TicketExpiresAt(appid, typ); rec.ExpiresAt.After(real) {
				t.Fatalf("%s: the record says the ticket expires %s, WeChat %s", e.Key(), rec.ExpiresAt, real)
			}
		}
	}
	dead, calls := 0, 0
	for _, id := range ids {
		for _, typ := range []string{"jsapi", "wx_card"} {
			c, _, d := fake.TicketCalls(id, typ)
			calls += c
			dead += d
		}
	}
	t.Logf("%d ticket rotations in %d ticket calls; %d tokens issued to the first app", tickets, calls, fake.Issued(ids[0]))
	if dead != 0 {
		t.Errorf("%d ticket calls with a dead token", dead)
	}
	if tokens := fake.Issued(ids[0]); tokens < rotations {
		t.Errorf("only %d token rotations for %d ticket rotations: the tickets did not cross token rotations", tokens, rotations)
	}
}

// TestTicketCallRefusingTheTokenRefreshesTheTokenOnce: WeChat killing the
// token under a ticket call sends the token through the forced-refresh
// path (checked, then fetched) and the ticket is asked for once more, with
// the new token.
func TestTicketCallRefusingTheTokenRefreshesTheTokenOnce(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	b := openBucket(t, ctx, nc)
	tokens := testenv.Entries(t, b, appA)
	tickets := testenv.Entries(t, b, appA+".jsapi_ticket")
	apps := testenv.Apps(fake, appA)
	apps[0].Tickets = []publisher.Ticket{publisher.TicketJSAPI}
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url})
	first := testenv.Record(t, testenv.Next(t, ctx, tokens))
	held := testenv.Next(t, ctx, tickets)
	awaitEndpoint(t, ctx, nc, appA)
	callsBefore, _, _ := fake.TicketCalls(appA, "jsapi")
	issuedBefore := fake.Issued(appA)

	fake.Revoke(first.Value)
	stale := held.Revision()
	reply := request(t, ctx, nc, appA+".jsapi_ticket", kv.RefreshRequest{StaleRevision: &stale})
	if reply.Error != nil {
		t.Fatalf("ticket refresh: %+v", reply.Error)
	}
	renewed := testenv.Record(t, testenv.Next(t, ctx, tokens))
	if renewed.Value == first.Value || renewed.Reason != kv.ReasonRequested {
		t.Fatalf("token after the ticket call refused it: %+v", renewed)
	}
	calls, _, dead := fake.TicketCalls(appA, "jsapi")
	if calls-callsBefore != 2 || dead != 1 {
		t.Errorf("%d ticket calls, %d with a dead token; want 2, the first refused", calls-callsBefore, dead)
	}
	if got := fake.Issued(appA) - issuedBefore; got != 1 {
		t.Errorf("%d tokens issued, want 1", got)
	}
	// The ticket itself was still good: WeChat gave the same one, and
	// nothing was written.
	if cur := mustGet(t, ctx, b, appA+".jsapi_ticket"); cur.Revision() != held.Revision() || reply.Refreshed {
		t.Errorf("ticket at revision %d (reply refreshed %v), want it untouched at %d", cur.Revision(), reply.Refreshed, held.Revision())
	}
}

// TestClientCommandsTakeAnyKey: get, status and sign with a ticket and a
// stable_token app, through the binary.
func TestClientCommandsTakeAnyKey(t *testing.T) {
	const stableApp = "wxb000000000000002"
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := append(ticketApps(fake, appA), stableApps(fake, stableApp)...)
	b := openBucket(t, ctx, nc)
	stored := testenv.Entries(t, b, appA+".jsapi_ticket")
	testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url})
	testenv.Next(t, ctx, stored)
	testenv.Next(t, ctx, testenv.Entries(t, b, stableApp))
	testenv.Next(t, ctx, testenv.Entries(t, b, appA+".wx_card_ticket"))
	env := []string{"NATS_URL=" + srv.ClientURL()}
	jsapi, _ := fake.Ticket(appA, "jsapi")

	if out, errOut, code := runWxtoken(t, env, "get", appA+".jsapi_ticket"); code != 0 || out != jsapi+"\n" {
		t.Errorf("get the ticket: exit %d, stdout %.20q, stderr %q", code, out, errOut)
	}
	out, _, code := runWxtoken(t, env, "status")
	for _, row := range []string{
		appA + `\s+access_token\s+token\s`,
		appA + `\.jsapi_ticket\s+jsapi_ticket\s+getticket\s`,
		appA + `\.wx_card_ticket\s+wx_card_ticket\s+getticket\s`,
		stableApp + `\s+access_token\s+stable_token\s`,
	} {
		if code != 0 || !regexp.MustCompile(row).MatchString(out) {
			t.Errorf("status (exit %d) lacks a row %s:\n%s", code, row, out)
		}
	}
	const page = "https://shop.example.com/pay?order=42"
	out, errOut, code := runWxtoken(t, env, "sign", appA, page+"#top")
	var config jssdk.Config
	if err := json.Unmarshal([]byte(out), &config); err != nil || code != 0 {
		t.Fatalf("sign: exit %d, %v, stderr %q:\n%s", code, err, errOut, out)
	}
	if config.AppID != appA || config.Signature != jssdk.Signature(jsapi, config.NonceStr, config.Timestamp, page) ||
		time.Since(time.Unix(config.Timestamp, 0)) > time.Minute {
		t.Errorf("sign printed %+v: not a valid signature of %s with the ticket, now", config, page)
	}
}
