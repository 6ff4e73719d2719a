package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
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

// add is called under the reloader's lock, never concurrently.
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
// changes. A secret that changed is probed first, and not used if WeChat
// refuses it (verifySecrets). Every app is probed again at once, whether
// the apps were taken or not (probes.reprobe).
func (r *Refresher) SetApps(apps []App) error {
	defer r.probes.reprobe()
	if err := checkApps(apps); err != nil {
		return fmt.Errorf("publisher: apps: %w", err)
	}
	// The platform bucket is opened at start, when the apps have a
	// platform, and followed until the refresher stops: whatever a reload
	// removed since.
	if hasPlatforms(apps) && !hasPlatforms(r.cfg.Apps) {
		return errors.New("publisher: apps: a reload cannot add the first platform: the platform bucket is opened at start; restart wxtoken")
	}
	r.keeper.mu.Lock()
	verified, passed := r.keeper.verifySecrets(apps)
	added, err := r.apps.reload(verified, whyReload)
	if err == nil {
		for _, key := range passed {
			r.probes.passed(key)
		}
	}
	r.keeper.mu.Unlock()
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

// reloader makes the loop's credentials: those of the apps configured,
// what is fetched with their tokens, and the authorizers of their
// platforms, each with the source that fetches it. It makes them again
// on every reload and whenever authorizers come or go.
type reloader struct {
	creds     *loop.Credentials
	platforms *platform.Platforms
	wechat    *upstream.Client // WeChat's API
	wecom     *upstream.Client // WeCom's
	limits    *source.HourlyLimits
	rescue    source.RescuePolicy // of a spent quota
	log       *slog.Logger
	secrets   secrets

	mu         sync.Mutex // one change of the credentials at a time
	configured []App      // the apps of the last reload, under mu
	// background is the reads of the token bucket for the credentials a
	// change of authorizers added (rebuild); Run waits for them.
	background sync.WaitGroup
}

// reload puts apps in place of the apps configured, makes the credentials
// again (why is the log line's message, "" for none), and returns the keys
// of the credentials it added.
func (l *reloader) reload(apps []App, why string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.platforms.Serve(platformsOf(apps)); err != nil {
		return nil, err
	}
	l.secrets.add(apps)
	previous := l.configured
	l.configured = apps
	return l.replace(previous, why), nil
}

// rebuild makes the credentials again after authorizers came or went. It
// runs on the platform bucket's follower, which reads the token bucket for
// the credentials added on another goroutine: a slow token bucket must not
// hold up the platform's next entries.
func (l *reloader) rebuild() {
	l.mu.Lock()
	added := l.replace(l.configured, whyAuthorizers)
	l.mu.Unlock()
	l.background.Go(func() { l.creds.Read(added) })
}

// replace makes the credentials of the apps configured and of the
// authorizers of their platforms, puts them in place of the ones before,
// and logs why with what changed; previous are the apps before, whose
// credentials stay, renewed if their secret or API changed. It returns the
// keys added. Callers hold l.mu.
func (l *reloader) replace(previous []App, why string) (added []string) {
	before := map[string]App{}
	for _, app := range previous {
		before[app.Key()] = app
	}
	var descs []loop.Desc
	var renewed []string
	for _, app := range l.configured {
		old, had := before[app.Key()]
		renew := had && (old.Secret.Reveal() != app.Secret.Reveal() || old.api() != app.api())
		if renew {
			renewed = append(renewed, app.Key())
		}
		descs = append(descs, loop.Desc{Key: app.Key(), Kind: kv.KindToken, Source: l.sourceOf(app), Renewed: renew})
		for _, t := range app.Tickets {
			descs = append(descs, loop.Desc{Key: kv.Key(app.Key(), t.kind()), Kind: t.kind(), Parent: app.Key(), Source: l.ticketSourceOf(app, t)})
		}
	}
	descs = append(descs, l.authorizersOf(descs)...)
	ch := l.creds.Replace(descs)
	// A reload always says what it did; authorizers, only when some came
	// or went.
	if why == whyReload || why != "" && len(ch.Added)+len(ch.Removed) > 0 {
		l.log.Info(why, "apps", l.creds.Len(), "added", summary(ch.Added), "removed", summary(ch.Removed),
			"changed", summary(renewed))
	}
	return ch.Added
}

// authorizersOf describes a credential for each active authorizer of a
// platform among descs.
func (l *reloader) authorizersOf(descs []loop.Desc) []loop.Desc {
	platforms, taken := map[string]*source.Component{}, map[string]bool{}
	for _, d := range descs {
		taken[d.Key] = true
		if c, ok := d.Source.(*source.Component); ok {
			platforms[d.Key] = c
		}
	}
	var authorizers []loop.Desc
	for _, a := range l.platforms.Authorizers() {
		switch {
		case platforms[a.Component] == nil:
			continue // a platform no longer configured
		case taken[a.AppID]:
			l.log.Warn("an authorizer's appid is an app of the apps file too; its token is kept as the app's", "authorizer", a.AppID)
			continue
		}
		authorizers = append(authorizers, loop.Desc{Key: a.AppID, Kind: kv.KindToken, Parent: a.Component,
			Source: source.NewAuthorizer(a.Component, a.AppID, l.platforms, l.wechat, l.log).Rescuing(platforms[a.Component].Rescuer())})
	}
	return authorizers
}

// sourceOf returns the source of an app's token.
func (l *reloader) sourceOf(app App) loop.Source {
	switch {
	case app.platform():
		return source.NewComponent(app.AppID, app.Secret, l.wechat, l.platforms).
			Rescuing(source.NewPlatformRescuer(l.rescue, app.AppID, app.Secret, l.wechat))
	case app.wecom():
		return source.NewWeComToken(app.CorpID, app.Secret, l.wecom)
	case app.TokenAPI == TokenAPIStable:
		return source.NewStable(app.AppID, app.Secret, l.wechat).Rescuing(l.rescuerOf(app))
	}
	return source.NewToken(app.AppID, app.Secret, l.wechat).Rescuing(l.rescuerOf(app))
}

// ticketSourceOf returns the source of an app's ticket.
func (l *reloader) ticketSourceOf(app App, t Ticket) loop.Source {
	if app.wecom() {
		return source.NewWeComTicket(t.kind(), l.wecom, l.limits)
	}
	return source.NewTicket(t.kind(), l.wechat).Rescuing(l.rescuerOf(app))
}

// rescuerOf returns the rescuer of app's spent quota.
func (l *reloader) rescuerOf(app App) *source.Rescuer {
	return source.NewRescuer(l.rescue, app.AppID, app.Secret, l.wechat)
}

// ticketPushed lets a platform's component token that waited for a verify
// ticket go, now that one came.
func (l *reloader) ticketPushed(component string) {
	if l.creds.Retry(component, source.WaitsForTicket) {
		l.log.Info("verify ticket pushed: fetching the component token", "component_appid", component)
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

// app returns the configured app of key.
func (l *reloader) app(key string) (App, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := slices.IndexFunc(l.configured, func(a App) bool { return a.Key() == key })
	if i < 0 {
		return App{}, false
	}
	return l.configured[i], true
}

// setSecret gives the configured app of key secret, as a reload that
// changed it alone would.
func (l *reloader) setSecret(key string, secret Secret) error {
	l.mu.Lock()
	apps := slices.Clone(l.configured)
	l.mu.Unlock()
	i := slices.IndexFunc(apps, func(a App) bool { return a.Key() == key })
	if i < 0 {
		return fmt.Errorf("publisher: no app %s (removed meanwhile)", key)
	}
	apps[i].Secret = secret
	_, err := l.reload(apps, "")
	return err
}
