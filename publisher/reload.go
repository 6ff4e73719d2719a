package publisher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
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
	added, err := r.reload(apps)
	if err != nil {
		return err
	}
	// No lock is held for the buckets' I/O: a slow bucket holds up no
	// other change of the credentials.
	r.readAdded(added)
	r.tendPlatforms(context.Background())
	return nil
}

// reload puts apps in place of the apps configured, and returns the keys
// of the credentials it added.
func (r *Refresher) reload(apps []App) ([]string, error) {
	r.reloading.Lock()
	defer r.reloading.Unlock()
	if err := r.setCrypters(apps); err != nil {
		return nil, fmt.Errorf("publisher: apps: %w", err)
	}
	r.secrets.add(apps)
	r.configured = apps
	return r.replaceCredentials(apps, whyReload), nil
}

// Why replaceCredentials runs, as its log line says.
const (
	whyReload      = "apps reloaded"
	whyAuthorizers = "authorizers changed"
)

// replaceCredentials makes the credentials of apps and of the authorizers
// of their platforms, puts them in place of the ones before, and logs why
// with what changed. It returns the keys added, whose values the caller
// reads (readAdded) once it no longer holds r.reloading. Callers hold
// r.reloading.
func (r *Refresher) replaceCredentials(apps []App, why string) (added []string) {
	old := r.apps.Load()
	next := newCredentialSet(apps, r.platforms.snapshot(), old, r.log.Warn)
	var removed, rekeyed []string
	for _, app := range apps {
		if a := old.find(app.Key()); a != nil && a.update(app) {
			a.mu.Lock()
			r.setRecord(a, a.rev, a.rec) // its refresh window may have changed
			a.mu.Unlock()
			rekeyed = append(rekeyed, app.Key())
		}
	}
	for _, c := range next.order {
		if old.find(c.key) == nil {
			added = append(added, c.key)
		}
	}
	// Out of the set first, so that no request finds them; then marked,
	// so that nothing armed before goes on.
	r.apps.Store(next)
	r.resyncAuthorizers(next)
	for _, a := range old.order {
		if next.byKey[a.key] == nil {
			a.remove()
			r.metrics.forget(a)
			removed = append(removed, a.key)
		}
	}
	// A reload always says what it did; authorizers, only when some came
	// or went.
	if why == whyReload || len(added)+len(removed) > 0 {
		r.log.Info(why, "apps", len(next.order), "added", summary(added), "removed", summary(removed),
			"changed", summary(rekeyed))
	}

	if t := r.term.Load(); t != nil {
		for _, id := range slices.Concat(added, rekeyed) {
			a := next.byKey[id]
			r.announceStored(a)
			r.plan(t, a)
		}
		if len(removed) > 0 {
			t.spawn(func() { r.dropRevoked(t) })
		}
	}
	return added
}

// readAdded reads the values of the credentials just added. The bucket's
// follower dropped the keys of apps it did not know: once it has read the
// bucket, read theirs (a rotation reads a key it knows nothing of before
// it fetches, too); before, it will deliver them.
func (r *Refresher) readAdded(added []string) {
	if b := r.bucket.Load(); b != nil && r.synced.Load() && len(added) > 0 {
		r.readKeys(*b, added)
	}
}

// readKeys takes in the bucket's values of appids, as the follower would,
// within one bucket.Timeout for them all.
func (r *Refresher) readKeys(b jetstream.KeyValue, appids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
	defer cancel()
	for _, id := range appids {
		e, err := b.Get(ctx, id)
		switch {
		case err == nil:
			r.observe(e)
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case ctx.Err() != nil:
			r.log.Warn("cannot read the tokens of apps just added; their rotations will", "error", err)
			return
		}
	}
}

// update gives the app its secret and token API and reports whether
// either changed. A fetch WeChat refused before (a configuration error)
// may go at once with the new ones, rather than after the
// configuration-error pause.
func (a *credential) update(app App) (changed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	src := sourceOf(app)
	if a.secret.Reveal() == app.Secret.Reveal() && a.src == src {
		return false
	}
	a.secret, a.src = app.Secret, src
	a.quietUntil = time.Time{}
	if upstream.ClassOf(a.lastErr) == upstream.ClassConfig {
		a.failures, a.retryAt, a.lastErr = 0, time.Time{}, nil
	}
	return true
}

// remove marks the app removed by a reload: no timer is set for it again,
// and none of its own fires.
func (a *credential) remove() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removed = true
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// summary lists a few appids for a log line.
func summary(ids []string) string {
	const most = 20
	if len(ids) <= most {
		return strings.Join(ids, ",")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:most], ","), len(ids)-most)
}
