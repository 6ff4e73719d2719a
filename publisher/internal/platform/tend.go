package platform

import (
	"context"
	"maps"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// Tend records in the platform bucket each platform served, and forgets
// those no longer served, so that the tools know which platforms this
// deployment serves; it warns, a line per platform, about authorizers of a
// platform not served: nobody keeps their tokens; and it opens the
// callbacks' replay guard. It runs at start, once the bucket has been
// read, and at every reload, one at a time, with the platforms served
// then.
func (p *Platforms) Tend(ctx context.Context) {
	b := p.bucket.Load()
	if b == nil {
		return
	}
	p.tending.Lock()
	defer p.tending.Unlock()
	served := map[string]bool{}
	for _, c := range p.Served() {
		served[c] = true
	}
	p.mu.Lock()
	recorded := maps.Clone(p.records)
	orphans := map[string]int{}
	for _, a := range p.authorizers {
		if !served[a.Component] {
			orphans[a.Component]++
		}
	}
	p.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	for _, c := range slices.Sorted(maps.Keys(served)) {
		if _, ok := recorded[c]; ok {
			continue
		}
		if _, err := kv.RecordPlatform(wctx, *b, c, p.now()); err != nil {
			p.cfg.Logger.Warn("cannot record the platform in the platform bucket; `wxtoken authorizers import` will not know it is served", "component_appid", c, "error", err)
		}
	}
	for _, c := range slices.Sorted(maps.Keys(recorded)) {
		if served[c] {
			continue
		}
		err := (*b).Delete(wctx, kv.PlatformKey(c), jetstream.LastRevision(recorded[c]))
		if err != nil && !bucket.IsConflict(err) { // recorded again meanwhile: served after all
			p.cfg.Logger.Warn("cannot drop the record of a platform no longer in the apps file", "component_appid", c, "error", err)
		}
	}
	for _, c := range slices.Sorted(maps.Keys(orphans)) {
		p.cfg.Logger.Warn("the platform bucket holds authorizers of a platform that is not in the apps file: nobody keeps their tokens; "+
			"add it under platforms:, or delete its authorizers if it is gone", "component_appid", c, "authorizers", orphans[c])
	}
	p.openReplays(ctx)
}
