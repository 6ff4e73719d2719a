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
func (l *reloader) probe(ctx context.Context, app App, secret Secret) error {
	switch {
	case app.platform():
		return source.ProbeComponent(ctx, l.wechat, app.AppID, secret)
	case app.wecom():
		return source.ProbeWeCom(ctx, l.wecom, app.CorpID, secret)
	}
	return source.ProbeStable(ctx, l.wechat, app.AppID, secret)
}
