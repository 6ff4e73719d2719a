package publisher

import (
	"context"

	"github.com/wxtoken/wxtoken/publisher/internal/source"
)

// probe asks WeChat whether secret works for app from this host, with the
// kind's call that changes nothing at WeChat (source/probe.go says which,
// and why each has no side effect): a standby may probe, and a new secret
// is probed before it is used. An authorizer has no secret of its own; its
// platform's secret is probed.
//
// The call is counted in the app's ledger first, as the loop's are: it
// counts at WeChat as theirs do. A count that fails does not stop it: a
// probe ends no token, so the ledger's judgement of dead tokens is not
// misled by one it misses.
func (l *reloader) probe(ctx context.Context, app App, secret Secret) error {
	if err := l.countProbe(ctx, app); err != nil {
		l.log.Warn("probe of the secret made without counting it in the ledger", "key", app.Key(), "error", err)
	}
	switch {
	case app.platform():
		return source.ProbeComponent(ctx, l.wechat, app.AppID, secret)
	case app.wecom():
		return source.ProbeWeCom(ctx, l.wecom, app.CorpID, secret)
	}
	return source.ProbeStable(ctx, l.wechat, app.AppID, secret)
}

// countProbe counts app's probe in its ledger; a reloader with no
// credentials (the probes' own tests) has no ledger.
func (l *reloader) countProbe(ctx context.Context, app App) error {
	if l.creds == nil {
		return nil
	}
	return l.creds.CountApart(ctx, app.Key(), probeAPI(app))
}

// probeAPI names app's probe call as the loop's calls to the same API are
// named in the metrics and the ledger.
func probeAPI(app App) string {
	switch {
	case app.platform():
		return "start_push_ticket"
	case app.wecom():
		return "wecom_token"
	}
	return "stable_token"
}
