package subscriber

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// A key the refresher removes for good (the token of an authorizer that
// withdrew its authorization from the platform) is no longer served: the
// refresher says so on the key's Value subject, and in the key's delete
// marker, for a subscriber that watches the key or reads it after a
// reconnect. A value stored later (the account authorizes again) ends the
// removal.

// removal is the key's removal, as the refresher announced it.
type removal struct {
	revision uint64 // of the delete marker
	reason   string
}

// remove takes in the key's removal at revision: Current, Refresh and
// Transport say so from then on, OnError and Err too, and Updated fires.
func (s *Subscriber) remove(revision uint64, reason string) {
	s.applying.Lock()
	defer s.applying.Unlock()
	if s.stopped || s.holdsNewer(revision) {
		return
	}
	s.removal.Store(&removal{revision: revision, reason: reason})
	s.report(s.removedError())
	s.changedLocked()
}

// removedError wraps ErrRemoved while the key is removed; nil otherwise.
func (s *Subscriber) removedError() error { return s.removal.Load().error(s.key) }

// error wraps ErrRemoved, saying why key was removed; nil for no removal.
func (r *removal) error(key string) error {
	if r == nil {
		return nil
	}
	why := r.reason
	if why == kv.RemovedUnauthorized {
		why = "the account withdrew its authorization from the platform"
	}
	return fmt.Errorf("%w: %s was removed at revision %d: %s", ErrRemoved, key, r.revision, why)
}

// lookForRemoval reads whether the key's delete marker says it was removed
// for good, and takes the removal in if it does. A failure to read says
// nothing: the token held stays.
func (s *Subscriber) lookForRemoval(ctx context.Context, bucket jetstream.KeyValue) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout)
	defer cancel()
	rev, reason, err := kv.LastRemoval(ctx, s.js, bucket.Bucket(), s.key)
	if err != nil {
		s.opts.logger.Debug("cannot read whether the key was removed", "appid", s.key, "error", err)
		return
	}
	if reason != "" {
		s.remove(rev, reason)
	}
}
