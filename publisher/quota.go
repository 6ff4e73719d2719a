package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/ledger"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// The quota poller: the leader asks WeChat's quota/get how many calls each
// app made today to the API paths its credentials are fetched from, and to
// the paths the agents report their proxies used, and compares WeChat's
// count with the ledger's count of the refresher's own calls. What WeChat
// counts beyond the ledger (and beyond WeChat's own error, quotaTolerance)
// is another party's: the poller says so loudly when it grows, and rotates
// a token the other party's fetch ends. See the README, "Another party's
// fetches, counted".

// agentPathEvery is the least time between two questions about a path
// only the agents reported: WeChat's counts of other APIs matter for the
// dashboards, not for a token another party kills.
const agentPathEvery = time.Hour

// chinaZone is UTC+8, where WeChat's day, and so its counts, starts.
var chinaZone = time.FixedZone("UTC+8", 8*60*60)

func chinaDay(t time.Time) string { return t.In(chinaZone).Format(time.DateOnly) }

// quotaTolerance is how many of used calls WeChat may count wrong: its
// counts are "一般在1%以内" (generally within 1%) of the truth, so 1% of
// used, rounded down. At fewer than 100 calls a day it is 0: one call
// another party made is seen.
func quotaTolerance(used int64) int64 { return max(used/100, 0) }

// othersOf is the calls to a path another party made, of used counted by
// WeChat and ours counted by the ledger: nothing within the tolerance, and
// nothing when ours is more (calls counted before they were made that
// never reached WeChat, or WeChat's count lagging).
func othersOf(used, ours int64) int64 {
	if d := used - ours; d > quotaTolerance(used) {
		return d
	}
	return 0
}

// quotaPoller asks quota/get for the leader. Every replica keeps the
// paths the agents report, so that a new leader knows them at once.
type quotaPoller struct {
	r     *Refresher
	every time.Duration
	// settle is how long a ledger begun today sets the baseline: longer
	// than a call of the refresher's may be counted and not yet at WeChat.
	settle time.Duration

	mu        sync.Mutex
	reported  map[string]map[string]bool // appid → API paths the agents' proxies called
	asked     map[pathKey]time.Time      // when this replica last asked, on the refresher's clock
	unaskable map[pathKey]string         // the China day quota/get said the path cannot be asked
}

type pathKey struct{ appid, path string }

func newQuotaPoller(r *Refresher, every time.Duration) *quotaPoller {
	return &quotaPoller{r: r, every: every, settle: 2 * r.cfg.UpstreamTimeout, reported: map[string]map[string]bool{},
		asked: map[pathKey]time.Time{}, unaskable: map[pathKey]string{}}
}

// takeReport keeps the API paths of an agent's usage report (handed
// over by listenForUsage), of this refresher's apps.
func (p *quotaPoller) takeReport(report kv.UsageReport) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range report.Paths {
		if !p.r.creds.Has(u.AppID) {
			continue // not an app of this refresher's: no token to ask with
		}
		if p.reported[u.AppID] == nil {
			p.reported[u.AppID] = map[string]bool{}
		}
		p.reported[u.AppID][u.Path] = true
	}
}

// targets are the apps to ask about, in a stable order.
func (p *quotaPoller) targets() []*target {
	set := targetSet{}
	p.r.creds.Each(func(v loop.Value) {
		path := ledger.Path(v.API)
		if path == "" {
			return // WeCom's: no quota/get
		}
		appid, _ := kv.SplitKey(v.Key)
		owner := appid
		if v.Parent != "" {
			owner, _ = kv.SplitKey(v.Parent) // fetched with its parent's token: counted against its owner
		}
		set.issuing(owner, appid, path)
	})
	p.mu.Lock()
	for appid, paths := range p.reported {
		if !p.r.creds.Has(appid) {
			continue // not an app of this refresher's: no token to ask with
		}
		for path := range paths {
			set.reported(appid, path)
		}
	}
	p.mu.Unlock()
	return set.list()
}

// forgetAllBut forgets what was asked about apps no longer in list (a
// reload removed them).
func (p *quotaPoller) forgetAllBut(list []*target) {
	kept := make(map[string]bool, len(list))
	for _, t := range list {
		kept[t.appid] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.asked {
		if !kept[k.appid] {
			delete(p.asked, k)
			delete(p.unaskable, k)
		}
	}
	for appid := range p.reported {
		if !p.r.creds.Has(appid) {
			delete(p.reported, appid)
		}
	}
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// poll asks about every app once per p.every, one app at a time, spread
// over the period, until ctx ends (the term did). The gauges of the
// readings go with the term: a replica that no longer leads shows none,
// rather than a count that no longer moves.
func (p *quotaPoller) poll(ctx context.Context) {
	defer p.r.metrics.quota.reset()
	p.showLast(ctx, p.targets())
	for {
		list := p.targets()
		p.forgetAllBut(list)
		gap := p.every / time.Duration(max(len(list), 1))
		askedAny := false
		for _, t := range list {
			asked, ok := p.askWithin(ctx, t, gap)
			if !ok {
				return
			}
			// Only a question takes its share of the period: an app
			// with nothing due (a former leader's recent reading) is
			// passed at once.
			if asked && !p.wait(ctx, gap) {
				return
			}
			askedAny = askedAny || asked
		}
		// A round that asked nothing looks again a tenth of the period
		// later, rather than at once.
		if !askedAny && !p.wait(ctx, max(p.every/10, gap)) {
			return
		}
	}
}

// noTokenRetry is how soon an app whose token is not held yet (its first
// fetch under way, or failing) is asked about again, within its share of
// the round: rather than a whole round later.
const noTokenRetry = 5 * time.Second

// askWithin asks about t's paths that are due, again every noTokenRetry
// while t's token is not held, for at most d; asked says whether a path
// was due, ok false once the term ended.
func (p *quotaPoller) askWithin(ctx context.Context, t *target, d time.Duration) (asked, ok bool) {
	start := p.r.cfg.Clock.now()
	for {
		asked, noToken, ok := p.ask(ctx, t)
		if !ok || !noToken || p.r.cfg.Clock.now().Sub(start)+noTokenRetry > d {
			return asked, ok
		}
		if !p.wait(ctx, noTokenRetry) {
			return asked, false
		}
	}
}

// showLast sets the gauges, as a term starts, from today's readings in
// the ledgers (a former leader's), which are not asked again before
// their time: without them the gauges, and the alerts on them, would
// be gone until then.
func (p *quotaPoller) showLast(ctx context.Context, list []*target) {
	today := chinaDay(p.r.cfg.Clock.now())
	for _, t := range list {
		l, ok, err := p.r.creds.ReadLedger(ctx, t.appid)
		if err != nil || !ok {
			continue
		}
		for path, q := range l.Quota {
			if t.of(path) != nil && chinaDay(q.At) == today {
				p.r.metrics.QuotaReading(t.appid, path, q)
			}
		}
	}
}

// wait waits d on the refresher's clock; false if ctx ended first.
func (p *quotaPoller) wait(ctx context.Context, d time.Duration) bool {
	passed := make(chan struct{})
	timer := p.r.cfg.Clock.afterFunc(d, func() { close(passed) })
	defer timer.Stop()
	select {
	case <-passed:
		return true
	case <-ctx.Done():
		return false
	}
}

// ask asks about each of t's paths that is due: asked says whether one
// was, noToken that t's token is not held yet to ask with, ok false once
// the term ended (ctx did).
func (p *quotaPoller) ask(ctx context.Context, t *target) (asked, noToken, ok bool) {
	for _, tp := range t.paths {
		path := tp.path
		if !p.due(ctx, t, path) {
			continue
		}
		asked = true
		// ErrEnding while the term goes on is a lease in doubt for a
		// moment: the path is asked next round.
		switch err := p.askPath(ctx, t, path); {
		case errors.Is(err, loop.ErrEnding) && ctx.Err() != nil:
			return asked, noToken, false
		case errors.Is(err, errNoToken):
			noToken = true
		}
	}
	return asked, noToken, true
}

// errNoToken is a question not asked: the app's token, which quota/get is
// asked with, is not held yet.
var errNoToken = errors.New("publisher: no valid token to ask quota/get with yet")

// due says whether path of t is to be asked now: once per p.every a path
// that issues t's credentials, once an hour another, never again the same
// China day one quota/get refused. A reading in the ledger (a former
// leader's) counts as asked.
func (p *quotaPoller) due(ctx context.Context, t *target, path string) bool {
	now := p.r.cfg.Clock.now()
	k := pathKey{t.appid, path}
	every := p.every
	if !t.issues(path) {
		every = max(every, agentPathEvery)
	}
	p.mu.Lock()
	last, refused := p.asked[k], p.unaskable[k] == chinaDay(now)
	p.mu.Unlock()
	if refused {
		return false
	}
	if last.IsZero() {
		if l, ok, err := p.r.creds.ReadLedger(ctx, t.appid); err == nil && ok {
			last = l.Quota[path].At
		}
	}
	return last.IsZero() || now.Sub(last) >= every
}

// askPath asks quota/get about path with t's own token, as a leader's call
// counted in the ledger, and takes the reading in.
func (p *quotaPoller) askPath(ctx context.Context, t *target, path string) error {
	held, ok := p.r.creds.Valid(t.appid)
	if !ok {
		return errNoToken
	}
	var q upstream.Quota
	var now time.Time // when WeChat was asked: its count holds every call made before
	err := p.r.creds.LeaderCall(ctx, t.appid, "quota_get", nil, func(ctx context.Context) error {
		var err error
		now = p.r.cfg.Clock.now()
		q, err = p.r.apps.wechat.QuotaGet(ctx, held.Value, path)
		return err
	})
	if now.IsZero() {
		now = p.r.cfg.Clock.now()
	}
	k := pathKey{t.appid, path}
	switch {
	case errors.Is(err, loop.ErrEnding):
		return err
	case upstream.Unaskable(err):
		p.mu.Lock()
		p.asked[k], p.unaskable[k] = now, chinaDay(now)
		p.mu.Unlock()
		p.r.log.Info("quota/get cannot be asked about this API path; not asked again today", "appid", t.appid, "cgi_path", path, "error", err)
		return nil
	case upstream.ClassOf(err) == upstream.ClassToken:
		// The token held is dead before its expiry (another party's
		// forced stable_token call ends it at once): it is checked and
		// replaced now, and the next reading, with the new token, says
		// whose doing it was.
		p.r.log.Warn("quota/get refused the app's token held: checking it, and rotating it if it is dead; asked again next round", "appid", t.appid, "cgi_path", path, "error", err)
		p.r.creds.Rotate(t.appid, true, kv.ReasonRequested)
		return nil
	case err != nil:
		p.r.log.Warn("quota/get failed; asked again next round", "appid", t.appid, "cgi_path", path, "error", err)
		return nil
	}
	p.mu.Lock()
	p.asked[k] = now
	p.mu.Unlock()
	return p.take(ctx, t, path, q, now)
}

// take compares q, WeChat's count of path, with the ledgers' count of the
// refresher's own calls the same China day, stores the reading in t's
// ledger, and, when another party's calls grew since the last reading of
// the day, says so and rotates the token the other party's fetch ends.
func (p *quotaPoller) take(ctx context.Context, t *target, path string, q upstream.Quota, now time.Time) error {
	day := chinaDay(now)
	var oursElsewhere int64 // counted in the ledgers of other apps (a platform's authorizers)
	for _, appid := range t.counters(path) {
		if appid == t.appid {
			continue
		}
		if l, ok, err := p.r.creds.ReadLedger(ctx, appid); err == nil && ok && l.Day == day {
			oursElsewhere += int64(ledger.Calls(l.Calls, path))
		}
	}
	reading := kv.QuotaReading{At: now.UTC(), DailyLimit: max(q.DailyLimit, 0), Used: q.Used, Remain: q.Remain}
	if q.RateLimit != nil {
		reading.RateLimit = &kv.RateLimit{CallCount: q.RateLimit.CallCount, RefreshSecond: q.RateLimit.RefreshSecond}
	}
	var growth int64
	err := p.r.creds.UpdateLedger(ctx, t.appid, func(l *kv.Ledger) bool {
		reading.Ours = oursElsewhere
		if l.Day == day {
			reading.Ours += int64(ledger.Calls(l.Calls, path))
		}
		if t.issues(path) {
			// Another path's calls are the agents' proxies' too, which
			// the ledger does not count: its count is shown, not judged.
			// Calls made in the last seconds of yesterday may be WeChat's
			// today: they are not taken for another party's.
			straddled := int64(ledger.Calls(l.Straddled(day), path))
			reading.Others = othersOf(reading.Used, reading.Ours+straddled)
		}
		// Growth is judged against the most others seen today: a reading
		// taken while one of the refresher's own calls was counted but
		// not yet at WeChat counts one too few.
		before := int64(0)
		if last, ok := l.Quota[path]; ok && chinaDay(last.At) == day {
			before = last.Others
		}
		if f := l.Foreign; f != nil && f.Path == path && chinaDay(f.At) == day {
			before = max(before, f.Others)
		}
		if young(*l, now, p.settle) {
			// A ledger that began counting today (the first start, or
			// the key or the bucket lost and written again) misses the
			// day's earlier calls, the refresher's own among them: its
			// readings in its first moments set the day's baseline, and
			// only calls beyond it are said to be another party's.
			before = max(before, reading.Others)
		}
		growth = max(reading.Others-before, 0)
		if l.Quota == nil {
			l.Quota = map[string]kv.QuotaReading{}
		}
		l.Quota[path] = reading
		keepReadings(l.Quota, t.issues)
		if growth > 0 {
			f := kv.ForeignFetch{At: now.UTC(), Path: path, Others: reading.Others, Count: 1}
			if l.Foreign != nil {
				f.Count = l.Foreign.Count + 1
			}
			l.Foreign = &f
		}
		return true
	})
	if err != nil {
		if errors.Is(err, loop.ErrEnding) {
			return err
		}
		// Nothing is said of a reading not stored: the next compares
		// with the last one that was, and would say it again.
		p.r.log.Warn("quota/get's reading not stored in the ledger; asked again next round", "appid", t.appid, "cgi_path", path, "error", err)
		return nil
	}
	p.r.metrics.QuotaReading(t.appid, path, reading)
	if growth > 0 {
		p.foreign(t, path, reading, growth)
	}
	return nil
}

// young says whether l began counting today, less than settle before
// now: its readings then set the day's baseline rather than say that
// another party called.
func young(l kv.Ledger, now time.Time, settle time.Duration) bool {
	china := now.In(chinaZone)
	start := time.Date(china.Year(), china.Month(), china.Day(), 0, 0, 0, 0, chinaZone)
	return l.Since.IsZero() || l.Since.After(start) && now.Sub(l.Since) < settle
}

// maxAgentReadings bounds the readings of the agents' paths an app's
// ledger keeps, the newest: the ledger is one value of the bucket, of at
// most kv.MaxRecordSize, and a reading takes about 150 bytes.
const maxAgentReadings = 40

// keepReadings drops from readings the oldest of the paths that issue
// none of the app's credentials, past maxAgentReadings.
func keepReadings(readings map[string]kv.QuotaReading, issuing func(path string) bool) {
	var others []string
	for path := range readings {
		if !issuing(path) {
			others = append(others, path)
		}
	}
	if len(others) <= maxAgentReadings {
		return
	}
	sort.Slice(others, func(i, j int) bool { return readings[others[i]].At.After(readings[others[j]].At) })
	for _, path := range others[maxAgentReadings:] {
		delete(readings, path)
	}
}

// endsHeld are the paths another party's call to which ends the token
// held, and whether the token must be checked first: a fetch from
// /cgi-bin/token ends it five minutes later, whatever; stable_token ends
// it only when forced, which quota/get does not tell apart.
var endsHeld = map[string]bool{"/cgi-bin/token": false, "/cgi-bin/stable_token": true}

// foreign says loudly that another party's calls to path grew, and
// rotates (or checks) the app's token that such a call ends.
func (p *quotaPoller) foreign(t *target, path string, reading kv.QuotaReading, growth int64) {
	p.r.log.Error("another party calls WeChat with this app's AppSecret: WeChat's quota/get counts more calls to an API path that issues the app's credentials than wxtoken made today. "+
		"Another system fetches this app's tokens itself (a second token server, a cron job, an SDK given the secret, an old deployment), and each of its /cgi-bin/token fetches (or forced stable_token calls) ends the token services hold: "+
		"find it and make it read tokens from wxtoken instead, or reset the AppSecret. WeChat's console shows every API call's source IP for 7 days (调用日志查询).",
		"appid", t.appid, "cgi_path", path, "others_today", reading.Others, "growth", growth, "used", reading.Used, "ours", reading.Ours)
	data, _ := json.Marshal(kv.FailureEvent{AppID: t.appid, Class: kv.ClassForeignFetch,
		ErrMsg: "WeChat counts calls to " + path + " today that wxtoken did not make: another party holds the AppSecret",
		At:     reading.At, NextAttempt: reading.At, Path: path, Others: reading.Others, Growth: growth})
	if err := p.r.nc.Publish(kv.Subjects{Prefix: p.r.cfg.SubjectPrefix}.Failed(t.appid), data); err != nil {
		p.r.log.Warn("failure event not published", "appid", t.appid, "error", err)
	}
	check, ends := endsHeld[path]
	if !ends || !t.issues(path) {
		return
	}
	if !p.r.creds.Rotate(t.appid, check, kv.ReasonRequested) {
		return
	}
	if check {
		p.r.log.Info("checking the token at once after another party's call: rotating it if WeChat says it is dead", "appid", t.appid, "cgi_path", path)
	} else {
		p.r.log.Info("rotating the token at once: another party's fetch ends it within WeChat's 5-minute overlap", "appid", t.appid, "cgi_path", path)
	}
}

// duty is the poller as the loop's duty on each term; nil without one.
func (p *quotaPoller) duty() func(context.Context) {
	if p == nil {
		return nil
	}
	return p.poll
}
