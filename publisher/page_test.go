package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// awaitPage renders r's first page until ok says it is what the test
// waits for, waking at each change of what the page shows (the bucket,
// the failures, the replicas' states); it returns the last view.
func awaitPage(t *testing.T, ctx context.Context, r *Refresher, what string, ok func(pageView) bool) pageView {
	t.Helper()
	for {
		changed := r.seen.updated()
		var peersChanged <-chan struct{}
		if p := r.shownPeers.Load(); p != nil {
			peersChanged = p.Updated()
		}
		v := r.pageView(ctx, 0)
		if ok(v) {
			return v
		}
		select {
		case <-changed:
		case <-peersChanged:
		case <-ctx.Done():
			t.Fatalf("the page never showed %s: %+v", what, v)
		}
	}
}

// TestStatusPageShowsStateAndNoSecret runs a leader of an app with a
// jsapi_ticket, writes the guardian's part of its ledger into the bucket
// (quota readings, a foreign fetch, a token killed elsewhere, a rescue and
// the month's resets) and publishes a failure whose errmsg holds the
// secret and the token, then reads the page over HTTP: each credential
// with its bucket revision, the leader, the quota bars, the budgets, the
// failure; and neither the AppSecret, nor the token, nor the ticket.
func TestStatusPageShowsStateAndNoSecret(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const appid, secret = "wxpage000000000001", "the-secret-no-page-may-show"
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(appid, secret)
	wechat := httptest.NewServer(fake)
	t.Cleanup(wechat.Close)
	srv := natstest.Server(t, nil)
	app := App{AppID: appid, Secret: NewSecret(secret), Tickets: []Ticket{TicketJSAPI}}
	r, logs, _ := runStandingReplica(t, ctx, srv.ClientURL(), wechat.URL, app, "page-1", "127.0.0.1")
	logs.await(t, ctx, "became leader", 1)

	nc, js := natstest.Connect(t, srv.ClientURL())
	b, err := js.KeyValue(ctx, kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	ticketKey := appid + "." + kv.KindJSAPITicket
	both := awaitPage(t, ctx, r, "the token and the ticket", func(v pageView) bool {
		return len(v.Creds) == 2 && v.Creds[0].Held && v.Creds[1].Held
	})
	values := map[string]string{} // key: value in the bucket
	for _, c := range both.Creds {
		e, err := b.Get(ctx, c.Key)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := kv.DecodeCredential(c.Key, e.Value())
		if err != nil {
			t.Fatal(err)
		}
		values[c.Key] = rec.Value
	}
	if values[appid] == "" || values[ticketKey] == "" {
		t.Fatalf("the bucket holds %v; want the token and the ticket", values)
	}

	now := time.Now().UTC()
	writeGuardian(t, ctx, b, appid, func(l *kv.Ledger) {
		l.Quota = map[string]kv.QuotaReading{
			"/cgi-bin/token":            {At: now, DailyLimit: 2000, Used: 1234, Remain: 766, Ours: 34, Others: 1200},
			"/cgi-bin/ticket/getticket": {At: now, DailyLimit: 1000, Used: 5, Remain: 995, Ours: 5},
		}
		l.Foreign = &kv.ForeignFetch{At: now, Path: "/cgi-bin/token", Others: 1200, Count: 3}
		l.Elsewhere = &kv.Elsewhere{At: now, Revision: 7, FetchedAt: now.Add(-time.Hour), ExpiresAt: now.Add(time.Hour), BeforeExpirySeconds: 3600, Count: 2}
		l.Rescue = &kv.Rescue{At: now, Path: "/cgi-bin/token", API: "quota_clear", Outcome: "rescued", Count: 1}
		l.MonthCalls["quota_clear"] = 2
		l.MonthCalls["clear_quota"] = 1
		l.MonthCalls["clear_quota_v2"] = 2
	})
	failure, _ := json.Marshal(kv.FailureEvent{AppID: appid, ErrCode: 40164,
		ErrMsg: fmt.Sprintf("invalid ip, not in whitelist, secret=%s token=%s", secret, values[appid]), Class: "config", NextAttempt: now})
	if err := nc.Publish(kv.Subjects{}.Failed(appid), failure); err != nil {
		t.Fatal(err)
	}
	// A failure with no errcode (a token killed elsewhere) of the app's
	// access_token, whose kind the event leaves empty.
	elsewhere, _ := json.Marshal(kv.FailureEvent{AppID: appid, ErrMsg: "the token was ended before its expiry by another party holding the AppSecret",
		Class: kv.ClassInvalidatedElsewhere, NextAttempt: now})
	if err := nc.Publish(kv.Subjects{}.Failed(appid), elsewhere); err != nil {
		t.Fatal(err)
	}
	awaitPage(t, ctx, r, "the ledger, the failures and the replica leading", func(v pageView) bool {
		return len(v.Apps) == 1 && v.Apps[0].Rescue != nil && len(v.Failures) == 2 && len(v.Replicas) == 1 && v.Replicas[0].Leading
	})

	page := httptest.NewServer(r.StatusPage())
	t.Cleanup(page.Close)
	resp, err := http.Get(page.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	html := string(body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("GET /: %d, Cache-Control %q; want 200 and no-store", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	for _, c := range both.Creds {
		e, _ := b.Get(ctx, c.Key)
		kind := "access_token"
		if c.Key == ticketKey {
			kind = kv.KindJSAPITicket
		}
		if want := fmt.Sprintf(`data-key="%s" data-kind="%s" data-revision="%d"`, c.Key, kind, e.Revision()); !strings.Contains(html, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	for _, want := range []string{
		"This replica leads", "The lease is held by <code>page-1</code>",
		`<tr data-replica="page-1"><td><code>page-1</code></td>
<td><span class="ok">leads</span></td>`,
		"1234 of 2000", `style="width: 61%"`, `style="width: 1%"`, // used, and ours, of /cgi-bin/token
		"5 of 1000",
		"calls to <code>/cgi-bin/token</code>: 1200 today",
		"Token revision 7 killed by someone else", "1h0m before its expiry",
		"quota/clear 2 of 50 used", "clear_quota and clear_quota/v2 3 of 10 a month, shared with the console, which 0 are kept for",
		"Last rescue: rescued of <code>/cgi-bin/token</code> by quota_clear",
		"40164", "secret=[REDACTED] token=[REDACTED]",
		"1 app: another party used the AppSecret",
		`<td>access_token</td><td class="bad">invalidated_elsewhere</td>
<td class="n"></td>`,
	} {
		if !strings.Contains(html, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	for what, value := range map[string]string{"the AppSecret": secret, "the token": values[appid], "the ticket": values[ticketKey]} {
		if strings.Contains(html, value) {
			t.Errorf("the page shows %s", what)
		}
	}
	if strings.Contains(html, "<script") || strings.Contains(html, "http://") || strings.Contains(html, "https://") {
		t.Errorf("the page has a script or an external reference; it must work offline")
	}
}

// writeGuardian changes appid's ledger in b with change, with
// compare-and-swap against the refresher's own counts.
func writeGuardian(t *testing.T, ctx context.Context, b jetstream.KeyValue, appid string, change func(*kv.Ledger)) {
	t.Helper()
	for ctx.Err() == nil {
		var l kv.Ledger
		var rev uint64
		e, err := b.Get(ctx, kv.LedgerKey(appid))
		switch {
		case err == nil:
			if l, err = kv.DecodeLedger(appid, e.Value()); err != nil {
				t.Fatal(err)
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
			l = kv.Ledger{AppID: appid}
			l.Count("token", time.Now(), false)
		default:
			t.Fatal(err)
		}
		change(&l)
		data, err := kv.EncodeLedger(l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err = b.Update(ctx, kv.LedgerKey(appid), data, rev); err == nil {
			return
		}
	}
	t.Fatal("the ledger was never written")
}

// TestStatusPagePaginates: past pageSize credentials, a page shows
// pageSize of them and links to the others; a page past the last shows
// the last.
func TestStatusPagePaginates(t *testing.T) {
	nc, _ := natstest.JetStream(t)
	var apps []App
	for i := range 2*pageSize + 50 {
		apps = append(apps, App{AppID: fmt.Sprintf("wxpage%012d", i), Secret: NewSecret("s")})
	}
	r, err := New(nc, Config{Apps: apps, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct{ page, want, shown, first int }{{0, 0, pageSize, 0}, {1, 1, pageSize, pageSize}, {2, 2, 50, 2 * pageSize}, {9, 2, 50, 2 * pageSize}} {
		v := r.pageView(ctx, c.page)
		if v.Page != c.want || len(v.Creds) != c.shown || v.Pages != 3 || v.Total != len(apps) || len(v.PageLinks) != 3 {
			t.Errorf("page %d: page %d of %d, %d shown of %d, links %v; want page %d of 3, %d shown of %d",
				c.page, v.Page, v.Pages, len(v.Creds), v.Total, v.PageLinks, c.want, c.shown, len(apps))
			continue
		}
		if want := apps[c.first].AppID; v.Creds[0].Key != want {
			t.Errorf("page %d starts with %s, want %s", c.page, v.Creds[0].Key, want)
		}
	}
}
