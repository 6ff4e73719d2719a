package publisher

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// The leader looks up, with WeChat's rid/get, the rids that WeChat's
// refusals named: of the refresher's own fetches (the failure event waits
// for the answer a short while, then carries when the call was taken, from
// which IP and how long it took) and of the calls the agents forwarded
// (their usage reports carry the rids; each is logged, not published as a
// failure event, which services would take for a failed refresh). Each rid
// is looked up once: the answers are kept a day, for the last ridsCached
// rids.
const (
	ridGetPath = "/cgi-bin/openapi/rid/get"
	// ridWait bounds how long a failure event waits for its rid's lookup;
	// a later answer is logged.
	ridWait    = 2 * time.Second
	ridsCached = 4096
	ridKept    = 24 * time.Hour
	// ridQueue bounds the agents' rids waiting for a lookup; past it one
	// is dropped, and looked up if an agent reports it again.
	ridQueue   = 1024
	ridWorkers = 2
)

// The results a rid lookup counts (wxtoken_rid_lookups_total).
const (
	ridFound      = "found"       // WeChat answered the call's record
	ridRefused    = "refused"     // WeChat answered an errcode (76001: unknown, over 7 days old)
	ridFailed     = "failed"      // no answer: looked up again when reported again
	ridNoToken    = "no_token"    // no valid token held to ask with
	ridNotLeading = "not_leading" // the term ended first
	ridDropped    = "dropped"     // the queue was full
	ridSkipped    = "skipped"     // an agent's, of a kind looked up less than agentRidEvery ago
)

// ridCodes are rid/get's errcodes.
var ridCodes = upstream.Codes{
	-1:    {Class: upstream.ClassRetry, Meaning: "WeChat is busy"},
	76001: {Class: upstream.ClassConfig, Meaning: "WeChat has no record of the rid (over 7 days old, or another account's)"},
	76002: {Class: upstream.ClassConfig, Meaning: "the rid is malformed"},
}

// ridRecord is what the refresher takes of rid/get's answer: never
// request_url, request_body or response_body, which may hold what a
// service sent.
type ridRecord struct {
	InvokeTime int64  `json:"invoke_time"`
	CostInMS   int64  `json:"cost_in_ms"`
	ClientIP   string `json:"client_ip"`
}

// ridEntry is one rid's lookup: under way until done is closed.
type ridEntry struct {
	seen   kv.RidSeen
	agent  string // whose report named it; "" for the refresher's own failure
	kind   string // the refresher's own: the credential's kind
	done   chan struct{}
	result string
	record ridRecord
	at     time.Time // when the lookup was asked for
	elem   *list.Element
}

// ridLookups looks rids up, once each.
type ridLookups struct {
	creds   *loop.Credentials
	wechat  *upstream.Client
	log     *slog.Logger
	now     func() time.Time
	leading func() bool
	counts  *prometheus.CounterVec // result

	mu      sync.Mutex
	sampled map[ridKind]time.Time // the agents' rids: when each kind was last looked up
	byRid   map[string]*ridEntry
	recent  *list.List     // the entries, most recently asked for first
	own     chan *ridEntry // the refresher's own failures: looked up first
	agents  chan *ridEntry
}

func newRidLookups(reg prometheus.Registerer, wechat *upstream.Client, cfg Config, leading func() bool) *ridLookups {
	l := &ridLookups{wechat: wechat, log: cfg.Logger,
		now: cfg.Clock.now, leading: leading, byRid: map[string]*ridEntry{}, sampled: map[ridKind]time.Time{}, recent: list.New(),
		own: make(chan *ridEntry, 64), agents: make(chan *ridEntry, ridQueue),
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxtoken_rid_lookups_total",
			Help: "Lookups of the rids WeChat's refusals named (40001, 45009, 40164, 48001), of the refresher's fetches and the agents' calls, with rid/get, by result (found, refused, failed, no_token, not_leading, dropped).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(l.counts)
	}
	return l
}

// run looks rids up until the returned func is called, which waits for
// the lookups under way.
func (l *ridLookups) run(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range ridWorkers {
		wg.Go(func() { l.work(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// takeReport takes the rids of an agent's usage report (handed over by
// listenForUsage), on the leader.
func (l *ridLookups) takeReport(r kv.UsageReport) {
	if !l.leading() {
		return // the leader looks them up: it alone may call WeChat
	}
	for _, seen := range r.Rids {
		if wechaterr.RidWorthLooking(seen.ErrCode) && l.sample(seen) {
			l.ask(seen, r.Agent, "")
		}
	}
}

// agentRidEvery is how often a refusal of the same app, path and errcode
// that the agents report is looked up: one tells who made such calls, and
// an API at its limit answers 45009 with a new rid to every call.
const agentRidEvery = 5 * time.Minute

// ridKind is what the agents' rids are sampled by.
type ridKind struct {
	appid, path string
	errcode     int
}

// sample says whether seen is the first of its kind in agentRidEvery,
// counting it skipped if not.
func (l *ridLookups) sample(seen kv.RidSeen) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	k := ridKind{seen.AppID, seen.Path, seen.ErrCode}
	if last, ok := l.sampled[k]; ok && now.Sub(last) < agentRidEvery {
		l.counts.WithLabelValues(ridSkipped).Inc()
		return false
	}
	if len(l.sampled) >= ridsCached {
		for k, last := range l.sampled {
			if now.Sub(last) >= agentRidEvery {
				delete(l.sampled, k)
			}
		}
	}
	l.sampled[k] = now
	return true
}

// detail is the loop's FailureDetail: for a failure event whose errmsg
// names a rid worth a lookup, it asks for the lookup and returns what adds
// rid/get's answer to the event, if it comes within ridWait.
func (l *ridLookups) detail(ev kv.FailureEvent) func(context.Context, *kv.FailureEvent) {
	if !wechaterr.RidWorthLooking(ev.ErrCode) {
		return nil
	}
	rid, ok := wechaterr.Rid(ev.ErrMsg)
	if !ok {
		return nil
	}
	e := l.ask(kv.RidSeen{AppID: ev.AppID, ErrCode: ev.ErrCode, Rid: rid, At: l.now().UTC()}, "", kindOf(ev.Kind))
	return func(ctx context.Context, ev *kv.FailureEvent) { e.addTo(ctx, ev) }
}

// addTo adds e's answer to ev once it comes, if within ridWait.
func (e *ridEntry) addTo(ctx context.Context, ev *kv.FailureEvent) {
	wait := time.NewTimer(ridWait)
	defer wait.Stop()
	select {
	case <-e.done:
	case <-wait.C:
		return // published without; the lookup is logged when it comes
	case <-ctx.Done():
		return
	}
	if e.result == ridFound {
		ev.InvokeTime = time.Unix(e.record.InvokeTime, 0).UTC()
		ev.ClientIP = e.record.ClientIP
		ev.CostInMS = e.record.CostInMS
	}
}

func kindOf(kind string) string {
	if kind == "" {
		return kv.KindToken
	}
	return kind
}

// ask returns the lookup of seen's rid: the one asked for within a day,
// or a new one, queued.
func (l *ridLookups) ask(seen kv.RidSeen, agent, kind string) *ridEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if e, ok := l.byRid[seen.Rid]; ok && now.Sub(e.at) < ridKept {
		l.recent.MoveToFront(e.elem)
		return e
	} else if ok {
		l.forget(e)
	}
	e := &ridEntry{seen: seen, agent: agent, kind: kind, done: make(chan struct{}), at: now}
	e.elem = l.recent.PushFront(e)
	l.byRid[seen.Rid] = e
	for l.recent.Len() > ridsCached {
		l.forget(l.recent.Back().Value.(*ridEntry))
	}
	queue := l.agents
	if agent == "" {
		queue = l.own
	}
	select {
	case queue <- e:
	default:
		l.forget(e)
		l.finish(e, ridDropped)
	}
	return e
}

// forget drops e from the cache: asked for again, its rid is looked up
// again. Callers hold l.mu.
func (l *ridLookups) forget(e *ridEntry) {
	if l.byRid[e.seen.Rid] == e {
		delete(l.byRid, e.seen.Rid)
	}
	l.recent.Remove(e.elem)
}

// finish records e's result.
func (l *ridLookups) finish(e *ridEntry, result string) {
	e.result = result
	l.counts.WithLabelValues(result).Inc()
	close(e.done)
}

// work looks up the queued rids, the refresher's own first, until ctx
// ends.
func (l *ridLookups) work(ctx context.Context) {
	for {
		var e *ridEntry
		select {
		case e = <-l.own:
		default:
			select {
			case e = <-l.own:
			case e = <-l.agents:
			case <-ctx.Done():
				return
			}
		}
		l.lookUp(ctx, e)
	}
}

// lookUp asks WeChat's rid/get about e's rid, with the app's valid token,
// as a call of the leader's (paced, fenced by the lease, counted in the
// ledger as rid_get), and logs the answer.
func (l *ridLookups) lookUp(ctx context.Context, e *ridEntry) {
	appid := e.seen.AppID
	token, ok := l.creds.Valid(appid)
	if !ok {
		l.log.Debug("rid not looked up: the refresher holds no valid token of the app to ask WeChat with", "appid", appid, "rid", e.seen.Rid)
		l.retryable(e, ridNoToken)
		return
	}
	body, _ := json.Marshal(map[string]string{"rid": e.seen.Rid})
	var answer struct {
		Request ridRecord `json:"request"`
	}
	err := l.creds.LeaderCall(ctx, appid, "rid_get", nil, func(ctx context.Context) error {
		status, data, err := l.wechat.PostJSON(ctx, ridGetPath, url.Values{"access_token": {token.Value}}, body, token.Value)
		if err != nil {
			return err
		}
		return upstream.DecodeJSON(status, data, ridCodes, &answer)
	})
	var refused *upstream.Error
	switch {
	case errors.Is(err, loop.ErrEnding):
		l.retryable(e, ridNotLeading)
		return
	case errors.As(err, &refused) && refused.Class == upstream.ClassConfig: // WeChat has no record of it
		l.log.Info("rid not found by WeChat", l.about(e, "rid_get_errcode", refused.ErrCode, "error", refused.Meaning())...)
		l.finish(e, ridRefused)
		return
	case err != nil:
		l.log.Info("rid not looked up: rid/get failed; looked up again if reported again", l.about(e, "error", err)...)
		l.retryable(e, ridFailed)
		return
	}
	e.record = answer.Request
	l.finish(e, ridFound)
	attrs := l.about(e, "invoke_time", time.Unix(e.record.InvokeTime, 0).UTC().Format(time.RFC3339),
		"client_ip", e.record.ClientIP, "cost_in_ms", e.record.CostInMS)
	if e.agent != "" {
		l.log.Warn("WeChat refused a call an agent forwarded; WeChat's record of it (rid/get)", attrs...)
		return
	}
	l.log.Warn("WeChat's record of the refused fetch (rid/get): client_ip is the address WeChat saw it from", attrs...)
}

// retryable records a result that leaves the rid to be looked up again.
func (l *ridLookups) retryable(e *ridEntry, result string) {
	l.mu.Lock()
	l.forget(e)
	l.mu.Unlock()
	l.finish(e, result)
}

// about is a log line's attributes of e, then more.
func (l *ridLookups) about(e *ridEntry, more ...any) []any {
	attrs := []any{"appid", e.seen.AppID, "rid", e.seen.Rid, "errcode", e.seen.ErrCode}
	if e.agent != "" {
		attrs = append(attrs, "path", e.seen.Path, "agent", e.agent)
	} else {
		attrs = append(attrs, "kind", e.kind)
	}
	return append(attrs, more...)
}
