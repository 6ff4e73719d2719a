package publisher

import (
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/wxtoken/wxtoken/internal/quotastate"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/source"
)

// The status page: a read-only HTML view of what this replica knows, for
// a person. It is built from memory (the loop's credentials, the failures
// and the apps that need a look kept in seen.go), one Get of the lease key
// and one of the ledger of each app shown, so a page load is bounded with
// 10 apps or 10,000: the credentials are shown pageSize at a time, with
// the ledgers of their apps, and the apps that need a look (a token killed
// elsewhere, another party's fetches, a rescue) are counted over all. No value of a credential is put on the
// page: the rows are built from the records' times and the bucket's
// revisions only, and failures' errmsgs are scrubbed (seen.lastFailures).

// pageSize is how many credentials one page shows.
const pageSize = 200

// maxAttention is how many apps needing a look the page lists by name.
const maxAttention = 20

//go:embed page.html
var pageHTML string

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago":   func(d time.Duration) string { return roughly(d) + " ago" },
	"in":    roughly,
	"utc":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"secs":  func(s int64) string { return roughly(time.Duration(s) * time.Second) },
	"plus1": func(n int) int { return n + 1 },
}).Parse(pageHTML))

// pageView is what the template renders.
type pageView struct {
	Now      time.Time
	Instance string
	Leading  bool
	Holder   string // the lease's holder, "" when none
	Since    time.Time
	HolderOK bool
	Problem  string // why the replica is not ready, "" when it is
	Replicas []kv.ReplicaState

	Creds      []credRow
	Total      int
	Page       int // from 0
	Pages      int
	Apps       []appRow // the ledgers of the apps on this page
	Attention  []string // apps of any page needing a look, at most maxAttention
	AttentionN int
	Failures   []kv.FailureEvent
	PageLinks  []int
	ClearLimit string // the account-wide reset's budget, as said to a person

	QuotaClearLimit int
}

type credRow struct {
	Key, Kind      string
	Revision       uint64
	Held           bool
	Age, ExpiresIn time.Duration
	Expired        bool
}

type appRow struct {
	AppID      string
	Elsewhere  *kv.Elsewhere
	Foreign    *kv.ForeignFetch
	Rescue     *kv.Rescue
	Quota      []quotaRow
	Month      string
	QuotaClear int // quota/clear calls this month
	ClearQuota int // clear_quota and clear_quota/v2 calls this month
}

type quotaRow struct {
	Path                      string
	Used, Limit, Ours, Others int64
	Percent, OursPct          int // of Limit, 0-100
	At                        time.Time
}

// StatusPage returns the handler of the status page: GET /, and
// ?page=N for the credentials past the first pageSize.
func (r *Refresher) StatusPage() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		page, _ := strconv.Atoi(req.URL.Query().Get("page"))
		ctx, cancel := context.WithTimeout(req.Context(), requestTimeout)
		defer cancel()
		view := r.pageView(ctx, max(page, 0))
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if err := pageTemplate.Execute(w, view); err != nil {
			r.log.Warn("status page not written", "error", err)
		}
	})
}

// pageView gathers page number page of the status page.
func (r *Refresher) pageView(ctx context.Context, page int) pageView {
	now := r.cfg.Clock.now()
	v := pageView{Now: now, Instance: r.cfg.Instance, Leading: r.Leading(), Failures: r.seen.lastFailures(),
		ClearLimit:      fmt.Sprintf("%d a month, shared with the console, which %d are kept for", source.AccountResets, r.cfg.QuotaClearReserve),
		QuotaClearLimit: source.PathResets}
	if err := r.Ready(); err != nil {
		v.Problem = err.Error()
	}
	if l := r.lease.Load(); l != nil {
		if h, ok, err := l.Holder(ctx); err == nil && ok {
			v.Holder, v.Since, v.HolderOK = h.Instance, h.Since, true
		}
	}
	if p := r.shownPeers.Load(); p != nil {
		v.Replicas = p.Live()
	}
	var all []loop.Value
	r.creds.Each(func(c loop.Value) { all = append(all, c) })
	v.Total = len(all)
	v.Pages = max((v.Total+pageSize-1)/pageSize, 1)
	v.Page = min(page, v.Pages-1)
	if v.Pages > 1 {
		for p := range v.Pages {
			v.PageLinks = append(v.PageLinks, p)
		}
	}
	shown := all[min(v.Page*pageSize, v.Total):min((v.Page+1)*pageSize, v.Total)]
	var appids []string
	for _, c := range shown {
		v.Creds = append(v.Creds, credRowOf(c, now))
		if appid, _ := kv.SplitKey(c.Key); !slices.Contains(appids, appid) {
			appids = append(appids, appid)
		}
	}
	v.Apps = r.ledgersOf(ctx, appids)
	notable := r.seen.notableApps()
	v.Attention, v.AttentionN = notable[:min(len(notable), maxAttention)], len(notable)
	return v
}

// ledgersOf reads the ledgers of appids from the token bucket, as long as
// ctx lasts; apps with none are left out.
func (r *Refresher) ledgersOf(ctx context.Context, appids []string) []appRow {
	b := r.tokens.Load()
	if b == nil {
		return nil
	}
	var rows []appRow
	for _, appid := range appids {
		e, err := (*b).Get(ctx, kv.LedgerKey(appid))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if l, err := kv.DecodeLedger(appid, e.Value()); err == nil {
			rows = append(rows, appRowOf(l))
		}
	}
	return rows
}

// credRowOf is c's row: times and revision, never the value.
func credRowOf(c loop.Value, now time.Time) credRow {
	_, kind := labelsOf(c.Key)
	row := credRow{Key: c.Key, Kind: kind, Revision: c.Revision}
	if c.Record != nil {
		row.Held = true
		row.Age = now.Sub(c.Record.FetchedAt)
		row.ExpiresIn = c.Record.ExpiresAt.Sub(now)
		row.Expired = row.ExpiresIn <= 0
	}
	return row
}

// appRowOf is what the page shows of an app's ledger.
func appRowOf(l kv.Ledger) appRow {
	state := quotastate.Of(l)
	row := appRow{AppID: state.AppID, Elsewhere: l.Elsewhere, Foreign: state.Foreign, Rescue: state.Rescue, Month: state.Month,
		QuotaClear: state.PathResets, ClearQuota: state.AccountResets}
	for _, r := range state.Readings { // ordered by path
		q := r.QuotaReading
		row.Quota = append(row.Quota, quotaRow{Path: r.Path, Used: q.Used, Limit: q.DailyLimit, Ours: q.Ours, Others: q.Others,
			Percent: percent(q.Used, q.DailyLimit), OursPct: percent(min(q.Ours, q.Used), q.DailyLimit), At: q.At})
	}
	return row
}

// percent is part of whole, 0 to 100.
func percent(part, whole int64) int {
	if whole <= 0 {
		return 0
	}
	return int(min(max(part*100/whole, 0), 100))
}

// roughly says d to a person: 3d4h, 2h5m, 4m10s, 12s.
func roughly(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch d = d.Round(time.Second); {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}
