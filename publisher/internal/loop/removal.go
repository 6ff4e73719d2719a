package loop

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// Some keys go for good (an authorizer that withdrew its authorization):
// the leader removes the value from the bucket with a delete marker that
// says why (kv.Remove), and announces the removal, once the key is no
// credential of the set. Until then, and until the removal succeeds, the
// key waits here; a term's leader tries at its start, whenever a key is
// added, and when the set loses credentials. A key that becomes a
// credential again (authorized anew) keeps its value.

// Removal is why a key goes for good.
type Removal struct {
	Reason string // the delete marker's and the announcement's (kv.RemovedUnauthorized)
	// Say logs that the key went, at the delete marker's revision.
	Say func(rev uint64)
}

type removals struct {
	mu   sync.Mutex
	keys map[string]*Removal
}

// cancel forgets the removal of keys that are credentials again.
func (r *removals) cancel(keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		delete(r.keys, k)
	}
}

// Remove removes key for good, for r, as soon as it is no credential and
// this replica leads.
func (c *Credentials) Remove(key string, r Removal) {
	c.removals.mu.Lock()
	c.removals.keys[key] = &r
	c.removals.mu.Unlock()
	if t := c.term.Load(); t != nil {
		c.removeNow(t)
	}
}

// removeNow removes, on the term, the keys waiting to be that are no
// credentials.
func (c *Credentials) removeNow(t *term) {
	t.spawn(func() {
		c.removals.mu.Lock()
		keys := slices.Sorted(maps.Keys(c.removals.keys))
		c.removals.mu.Unlock()
		for _, key := range keys {
			if c.Has(key) {
				continue // its credential goes first
			}
			c.removals.mu.Lock()
			r, ok := c.removals.keys[key]
			c.removals.mu.Unlock()
			if ok && c.removeKey(t, key, r) {
				c.removals.mu.Lock()
				if c.removals.keys[key] == r {
					delete(c.removals.keys, key)
				}
				c.removals.mu.Unlock()
			}
		}
	})
}

// removeKey removes key's value for r, and reports whether the key holds
// no value any more.
func (c *Credentials) removeKey(t *term, key string, r *Removal) bool {
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	e, err := t.bucket.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return true
	case err != nil:
		return false // the next term tries again
	}
	rev, err := kv.Remove(ctx, c.cfg.JS, t.bucket.Bucket(), key, e.Revision(), r.Reason)
	if err != nil {
		return false
	}
	c.announceRemoval(key, rev, r.Reason)
	if r.Say != nil {
		r.Say(rev)
	}
	return true
}

// announceRemoval tells the subscribers of key's values, then whoever
// follows the events, that it was removed at revision rev: they stop using
// the value they hold.
func (c *Credentials) announceRemoval(key string, rev uint64, reason string) {
	if err := c.cfg.Conn.PublishMsg(kv.RemovalMsg(c.subjects, key, rev, reason)); err != nil {
		c.log.Warn("removal not published to the subscribers", "key", key, "error", err)
	}
	c.cfg.Conn.FlushTimeout(valueFlushWait)
	appid, kind := kv.SplitKey(key)
	ev, _ := json.Marshal(kv.RemovalEvent{AppID: appid, Kind: kind, Revision: rev, Reason: reason, RemovedAt: c.now().UTC()})
	if err := c.cfg.Conn.Publish(c.subjects.Removed(key), ev); err != nil {
		c.log.Warn("removal event not published", "key", key, "error", err)
	}
}
