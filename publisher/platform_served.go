package publisher

import (
	"context"
	"maps"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// tendPlatforms records in the platform bucket each platform of the apps, and
// forgets those no longer among them, so that the tools know which
// platforms this deployment serves; it warns, a line per platform, about
// authorizers of a platform not among apps: nobody keeps their tokens; and
// it opens the callbacks' replay guard. It runs at start, once the bucket
// has been read, and at every reload, one at a time, with the apps
// configured then.
func (r *Refresher) tendPlatforms(ctx context.Context) {
	b := r.platformBucket.Load()
	if b == nil {
		return
	}
	r.tending.Lock()
	defer r.tending.Unlock()
	r.reloading.Lock()
	apps := r.configured
	r.reloading.Unlock()
	served := map[string]bool{}
	for _, app := range apps {
		if app.platform() {
			served[app.AppID] = true
		}
	}
	p := r.platforms
	p.mu.Lock()
	recorded := maps.Clone(p.records)
	orphans := map[string]int{}
	for _, e := range p.authorizers {
		if c := e.record.ComponentAppID; !served[c] {
			orphans[c]++
		}
	}
	p.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	for _, c := range slices.Sorted(maps.Keys(served)) {
		if _, ok := recorded[c]; ok {
			continue
		}
		if _, err := kv.RecordPlatform(wctx, *b, c, r.cfg.Clock.now()); err != nil {
			r.log.Warn("cannot record the platform in the platform bucket; `wxtoken authorizers import` will not know it is served", "component_appid", c, "error", err)
		}
	}
	for _, c := range slices.Sorted(maps.Keys(recorded)) {
		if served[c] {
			continue
		}
		err := (*b).Delete(wctx, kv.PlatformKey(c), jetstream.LastRevision(recorded[c]))
		if err != nil && !bucket.IsConflict(err) { // recorded again meanwhile: served after all
			r.log.Warn("cannot drop the record of a platform no longer in the apps file", "component_appid", c, "error", err)
		}
	}
	for _, c := range slices.Sorted(maps.Keys(orphans)) {
		r.log.Warn("the platform bucket holds authorizers of a platform that is not in the apps file: nobody keeps their tokens; "+
			"add it under platforms:, or delete its authorizers if it is gone", "component_appid", c, "authorizers", orphans[c])
	}
	r.openReplays(ctx)
}
