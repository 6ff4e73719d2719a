package publisher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/platform"
	"github.com/wxtoken/wxtoken/publisher/internal/source"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// secrets is every AppSecret the refresher was ever given, for scrubbing:
// one removed by a reload may still sit in the text of a panic.
type secrets struct {
	list atomic.Pointer[upstream.Scrubber]
}

func (s *secrets) scrubber() upstream.Scrubber {
	if p := s.list.Load(); p != nil {
		return *p
	}
	return nil
}

// add is called under the refresher's reload lock, never concurrently.
func (s *secrets) add(apps []App) {
	list := slices.Clone(s.scrubber())
	for _, app := range apps {
		secrets := []Secret{app.Secret}
		if app.platform() {
			secrets = append(secrets, app.Platform.MessageToken, app.Platform.EncodingAESKey)
		}
		for _, s := range secrets {
			if secret := s.Reveal(); secret != "" && !slices.Contains(list, secret) {
				list = append(list, secret)
			}
		}
	}
	// Longest first: a secret that contains another must go whole, not
	// leave what the shorter one did not cover.
	slices.SortStableFunc(list, func(a, b string) int { return len(b) - len(a) })
	s.list.Store(&list)
}

// SetApps replaces the apps the refresher keeps tokens for, on a leader
// and on a standby alike, without touching the lease. An app that stays
// keeps its state; one whose secret changed uses the new secret from its
// next fetch on, at once if the old one had been refused. New apps take
// their token from the bucket, or, on the leader, get a first one now.
// Removed apps are no longer refreshed and their refresh requests are
// answered unknown_app; their keys stay in the bucket, valid until they
// expire, and a rotation under way for one still stores its token. apps
// is checked as New checks Config.Apps: if it is refused, nothing
// changes.
func (r *Refresher) SetApps(apps []App) error {
	if err := checkApps(apps); err != nil {
		return fmt.Errorf("publisher: apps: %w", err)
	}
	// The platform bucket is opened at start, when the apps have a
	// platform, and followed until the refresher stops: whatever a reload
	// removed since.
	if hasPlatforms(apps) && !hasPlatforms(r.cfg.Apps) {
		return errors.New("publisher: apps: a reload cannot add the first platform: the platform bucket is opened at start; restart wxtoken")
	}
	added, err := r.reload(apps, whyReload)
	if err != nil {
		return fmt.Errorf("publisher: apps: %w", err)
	}
	// No lock is held for the buckets' I/O: a slow bucket holds up no
	// other change of the credentials.
	r.creds.Read(added)
	r.platforms.Tend(context.Background())
	return nil
}

// Why the credentials are made again, as the log line says.
const (
	whyReload      = "apps reloaded"
	whyAuthorizers = "authorizers changed"
)

// reload puts apps in place of the apps configured, makes the credentials
// again (why is the log line's message, "" for none), and returns the keys
// of the credentials it added.
func (r *Refresher) reload(apps []App, why string) ([]string, error) {
	r.reloading.Lock()
	defer r.reloading.Unlock()
	if err := r.platforms.Serve(platformsOf(apps)); err != nil {
		return nil, err
	}
	r.secrets.add(apps)
	previous := r.configured
	r.configured = apps
	return r.replace(previous, why), nil
}

// rebuild makes the credentials again after authorizers came or went. It
// runs on the platform bucket's follower, which reads the token bucket for
// the credentials added on another goroutine: a slow token bucket must not
// hold up the platform's next entries.
func (r *Refresher) rebuild() {
	r.reloading.Lock()
	added := r.replace(r.configured, whyAuthorizers)
	r.reloading.Unlock()
	r.background.Go(func() { r.creds.Read(added) })
}

// replace makes the credentials of the apps configured and of the
// authorizers of their platforms, puts them in place of the ones before,
// and logs why with what changed; previous are the apps before, whose
// credentials stay, renewed if their secret or API changed. It returns the
// keys added. Callers hold r.reloading.
func (r *Refresher) replace(previous []App, why string) (added []string) {
	before := map[string]App{}
	for _, app := range previous {
		before[app.Key()] = app
	}
	var descs []loop.Desc
	var renewed []string
	for _, app := range r.configured {
		old, had := before[app.Key()]
		renew := had && (old.Secret.Reveal() != app.Secret.Reveal() || old.api() != app.api())
		if renew {
			renewed = append(renewed, app.Key())
		}
		descs = append(descs, loop.Desc{Key: app.Key(), Kind: kv.KindToken, Source: r.sourceOf(app), Renewed: renew})
		for _, t := range app.Tickets {
			descs = append(descs, loop.Desc{Key: kv.Key(app.Key(), t.kind()), Kind: t.kind(), Parent: app.Key(), Source: r.ticketSourceOf(app, t)})
		}
	}
	descs = append(descs, r.authorizersOf(descs)...)
	ch := r.creds.Replace(descs)
	// A reload always says what it did; authorizers, only when some came
	// or went.
	if why == whyReload || why != "" && len(ch.Added)+len(ch.Removed) > 0 {
		r.log.Info(why, "apps", r.creds.Len(), "added", summary(ch.Added), "removed", summary(ch.Removed),
			"changed", summary(renewed))
	}
	return ch.Added
}

// authorizersOf describes a credential for each active authorizer of a
// platform among descs.
func (r *Refresher) authorizersOf(descs []loop.Desc) []loop.Desc {
	platforms, taken := map[string]bool{}, map[string]bool{}
	for _, d := range descs {
		taken[d.Key] = true
		if _, ok := d.Source.(*source.Component); ok {
			platforms[d.Key] = true
		}
	}
	var authorizers []loop.Desc
	for _, a := range r.platforms.Authorizers() {
		switch {
		case !platforms[a.Component]:
			continue // a platform no longer configured
		case taken[a.AppID]:
			r.log.Warn("an authorizer's appid is an app of the apps file too; its token is kept as the app's", "authorizer", a.AppID)
			continue
		}
		authorizers = append(authorizers, loop.Desc{Key: a.AppID, Kind: kv.KindToken, Parent: a.Component,
			Source: source.NewAuthorizer(a.Component, a.AppID, r.platforms, r.wechat, r.log)})
	}
	return authorizers
}

// sourceOf returns the source of an app's token.
func (r *Refresher) sourceOf(app App) loop.Source {
	switch {
	case app.platform():
		return source.NewComponent(app.AppID, app.Secret, r.wechat, r.platforms)
	case app.wecom():
		return source.NewWeComToken(app.CorpID, app.Secret, r.wecom)
	case app.TokenAPI == TokenAPIStable:
		return source.NewStable(app.AppID, app.Secret, r.wechat)
	}
	return source.NewToken(app.AppID, app.Secret, r.wechat)
}

// ticketSourceOf returns the source of an app's ticket.
func (r *Refresher) ticketSourceOf(app App, t Ticket) loop.Source {
	if app.wecom() {
		return source.NewWeComTicket(t.kind(), r.wecom, r.limits)
	}
	return source.NewTicket(t.kind(), r.wechat)
}

// ticketPushed lets a platform's component token that waited for a verify
// ticket go, now that one came.
func (r *Refresher) ticketPushed(component string) {
	if r.creds.Retry(component, source.WaitsForTicket) {
		r.log.Info("verify ticket pushed: fetching the component token", "component_appid", component)
	}
}

// platformsOf returns the platforms among apps.
func platformsOf(apps []App) []platform.Platform {
	var platforms []platform.Platform
	for _, app := range apps {
		if app.platform() {
			platforms = append(platforms, platform.Platform{AppID: app.AppID, MessageToken: app.Platform.MessageToken, EncodingAESKey: app.Platform.EncodingAESKey})
		}
	}
	return platforms
}

// summary lists a few appids for a log line.
func summary(ids []string) string {
	const most = 20
	if len(ids) <= most {
		return strings.Join(ids, ",")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:most], ","), len(ids)-most)
}
