package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/standby"
)

// Every replica, standbys included, proves that it could lead: it asks
// WeChat, with each kind's call that changes nothing there (probe.go),
// whether it can use each app's secret from its own address, at start,
// every Config.ProbeEvery after and at once on a reload; a new secret's
// probe before it is used (secretset.go) is the app's verdict too. A
// refusal that needs a human (40164 IP not whitelisted, 89503 awaiting
// the administrator, 40125 wrong secret, 40243 frozen, ...) becomes the
// app's state on this replica: an ERROR line with the fix once per
// change, wxtoken_replica_can_lead{appid}, Ready's answer, and the state
// the replica publishes for the others (standing.go), which decides who
// campaigns for the lease.

// probePace is the least time between two probes of the start round: an
// apps file of hundreds of apps is probed in a minute or so, not in one
// burst. After it, the apps are probed one at a time, spread evenly over
// the interval.
const probePace = 100 * time.Millisecond

// probes runs this replica's probes and holds their verdicts.
type probes struct {
	every   time.Duration
	apps    *reloader
	table   standby.Table
	canLead *prometheus.GaugeVec // appid
	log     *slog.Logger
	now     func() time.Time
	changed chan struct{} // a verdict changed: publish the state now
	// onChange, if set, is called after a verdict changed or was
	// forgotten: whether this replica answers logins may have changed.
	onChange func()
	again    chan struct{} // a reload asked for a round now (reprobe)
	// recording makes "is the probed secret still the app's?" and the
	// record of the verdict one step, so that a probe of a secret a
	// take or a reload replaced meanwhile never overwrites the verdict
	// recorded for the new one (passed).
	recording sync.Mutex
}

func newProbes(cfg Config, apps *reloader) *probes {
	p := &probes{every: cfg.ProbeEvery, apps: apps, log: cfg.Logger, now: cfg.Clock.now, changed: make(chan struct{}, 1), again: make(chan struct{}, 1),
		canLead: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wxtoken_replica_can_lead",
			Help: "1 if this replica's last probe proved it can use the app's secret from its address (it could lead the app), 0 if WeChat refused (IP not whitelisted, secret wrong or frozen); absent before the first verdict.",
		}, []string{"appid"})}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.canLead)
	}
	return p
}

// run probes until ctx ends: the start round at probePace, then one app
// every interval/apps. An answer that proves nothing (a network error,
// WeChat busy) keeps the last verdict, and the app is probed again sooner.
// A reload (reprobe) starts a round at probePace at once, whatever the
// round under way had left.
func (p *probes) run(ctx context.Context) {
	if p.every <= 0 {
		return
	}
	retries := map[string]time.Time{} // by key: when to probe again
	for fast := true; ; {
		switch p.round(ctx, fast, retries) {
		case stopped:
			return
		case reprobed:
			fast = true
		default:
			fast = false
		}
	}
}

// How a wait, or a round, ended.
type waited int

const (
	elapsed  waited = iota // the time was up
	stopped                // ctx ended
	reprobed               // a reload asked for a round now
)

// round probes each app configured now, gap apart: probePace at most if
// fast, the interval spread over the apps otherwise. After the last app it
// waits the interval's share in either case: the next round's first app
// was probed a share ago at the least, not probePace ago.
func (p *probes) round(ctx context.Context, fast bool, retries map[string]time.Time) waited {
	apps := p.targets()
	share := p.every / time.Duration(max(len(apps), 1))
	gap := share
	if fast {
		gap = min(share, probePace)
	}
	if len(apps) == 0 {
		return p.pause(ctx, p.every, retries)
	}
	for i, app := range apps {
		p.probe(ctx, app, retries)
		wait := gap
		if i == len(apps)-1 {
			wait = share
		}
		if w := p.pause(ctx, wait, retries); w != elapsed {
			return w
		}
	}
	return elapsed
}

// reprobe has every app probed again now, in a round at probePace: a
// reload may have added apps (a replica is deferred to only once it has
// judged them all), and an operator who fixed a whitelist reloads
// (SIGHUP) to have it seen at once rather than at the next round.
func (p *probes) reprobe() {
	select {
	case p.again <- struct{}{}:
	default:
	}
}

// targets returns the apps configured now, and forgets the verdicts of
// those a reload removed. Every configured app has a secret: an
// authorizer's is its platform's, probed as the platform.
func (p *probes) targets() []App {
	p.apps.mu.Lock()
	apps := slices.Clone(p.apps.configured)
	p.apps.mu.Unlock()
	keys := make([]string, len(apps))
	for i, app := range apps {
		keys[i] = app.Key()
	}
	p.recording.Lock() // a verdict recorded meanwhile would keep its metric
	forgotten := p.table.Keep(keys)
	for _, key := range forgotten {
		p.canLead.DeleteLabelValues(key)
	}
	p.recording.Unlock()
	if len(forgotten) > 0 {
		p.notify()
	}
	return apps
}

// pause waits d, probing again meanwhile the apps whose retry falls due;
// it ends early if ctx ends or a reload asks for a round.
func (p *probes) pause(ctx context.Context, d time.Duration, retries map[string]time.Time) waited {
	end := time.Now().Add(d)
	for {
		next, key := end, ""
		for k, at := range retries {
			if at.Before(next) {
				next, key = at, k
			}
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return stopped
		case <-p.again:
			t.Stop()
			return reprobed
		case <-t.C:
		}
		if key == "" {
			return elapsed
		}
		delete(retries, key)
		apps := p.targets() // a reload may have removed it meanwhile
		if i := slices.IndexFunc(apps, func(a App) bool { return a.Key() == key }); i >= 0 {
			p.probe(ctx, apps[i], retries)
		}
	}
}

// probeRetry is how soon an app whose probe proved nothing is probed again.
func (p *probes) probeRetry() time.Duration { return min(p.every/10, time.Minute) }

// probe probes app once and records the verdict, unless the app's secret
// changed meanwhile: the change recorded its own (passed).
func (p *probes) probe(ctx context.Context, app App, retries map[string]time.Time) {
	key := app.Key()
	err := p.apps.probe(ctx, app, app.Secret)
	if ctx.Err() != nil {
		return
	}
	v, decided := standby.Judge(key, err, p.now())
	if !decided {
		p.log.Debug("probe inconclusive; the last verdict stands", "appid", key, "error", err)
		retries[key] = time.Now().Add(p.probeRetry())
		return
	}
	delete(retries, key)
	p.recording.Lock()
	defer p.recording.Unlock()
	if now, ok := p.apps.app(key); !ok || now.Secret.Reveal() != app.Secret.Reveal() {
		return
	}
	p.record(key, v)
}

// passed records that WeChat accepted the secret now in use for the app
// key, probed by a take or a reload's check before it was used: the last
// verdict (40125 for the secret replaced, say) must not stand until the
// next round, up to an interval later. Call it once the secret is in use.
func (p *probes) passed(key string) {
	p.recording.Lock()
	defer p.recording.Unlock()
	p.record(key, standby.Verdict{OK: true, CheckedAt: p.now()})
}

// record keeps v as the app key's verdict, sets the metric, and on a
// change logs it and has the state published.
func (p *probes) record(key string, v standby.Verdict) {
	last, had, changed := p.table.Record(key, v)
	if v.OK {
		p.canLead.WithLabelValues(key).Set(1)
	} else {
		p.canLead.WithLabelValues(key).Set(0)
	}
	if !changed {
		return
	}
	defer p.publishNow()
	defer p.notify()
	switch {
	case !v.OK:
		p.log.Error("this replica cannot lead "+key+": "+v.Fix, "appid", key, "errcode", v.ErrCode, "problem", v.Problem, "errmsg", v.ErrMsg)
	case had && !last.OK:
		p.log.Info("this replica can lead "+key+" again: WeChat accepts its secret from here", "appid", key)
	}
}

// publishNow has this replica's state published at once, rather than at
// the next third of a lease TTL: a verdict changed, or the replica began
// to campaign.
func (p *probes) publishNow() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// notify calls onChange, if set.
func (p *probes) notify() {
	if p.onChange != nil {
		p.onChange()
	}
}

// cannotLead is how many apps this replica's last verdicts say it cannot
// use the secret of.
func (p *probes) cannotLead() int {
	_, verdicts := p.table.Summary(p.configuredKeys())
	return len(verdicts)
}

// state is what this replica publishes of its verdicts: how many apps
// its probes judged of those configured, and the apps it cannot lead, at
// most maxReplicaApps of them listed. With its probes off it has nothing
// to judge (configured 0): it is complete, and counts no app it cannot
// lead, as before replicas probed. Its operator chose not to have it
// checked; deferring to no one, and being deferred to, is what it did
// then, and a replica that never judges must not be left out for good.
func (p *probes) state() (probed, configured int, cannot []kv.ReplicaApp, count int) {
	keys := p.configuredKeys()
	probed, verdicts := p.table.Summary(keys)
	if p.every > 0 {
		configured = len(keys)
	}
	for _, v := range verdicts[:min(len(verdicts), maxReplicaApps)] {
		cannot = append(cannot, kv.ReplicaApp{AppID: v.AppID, ErrCode: v.ErrCode, Address: v.Address,
			Problem: v.Problem, Fix: v.Fix, CheckedAt: v.CheckedAt.UTC()})
	}
	return probed, configured, cannot, len(verdicts)
}

// configuredKeys returns the keys of the apps configured now.
func (p *probes) configuredKeys() []string {
	p.apps.mu.Lock()
	defer p.apps.mu.Unlock()
	keys := make([]string, len(p.apps.configured))
	for i, app := range p.apps.configured {
		keys[i] = app.Key()
	}
	return keys
}

// maxReplicaApps bounds the apps a replica's state lists, to keep it well
// inside a record's size; the count covers them all.
const maxReplicaApps = 40

// problem says which apps this replica cannot lead, and why, or nil.
func (p *probes) problem(leading bool) error {
	_, verdicts := p.table.Summary(p.configuredKeys())
	if len(verdicts) == 0 {
		return nil
	}
	what := "this replica could not take over"
	if leading {
		what = "this replica leads, but cannot fetch"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "publisher: %s %d app(s): WeChat refuses them from where it stands", what, len(verdicts))
	for _, v := range verdicts[:min(len(verdicts), 10)] {
		fmt.Fprintf(&b, "; %s: errcode %d (%s): %s", v.AppID, v.ErrCode, v.Problem, v.Fix)
	}
	if len(verdicts) > 10 {
		fmt.Fprintf(&b, "; and %d more (wxtoken status lists them)", len(verdicts)-10)
	}
	return fmt.Errorf("%s", b.String())
}
