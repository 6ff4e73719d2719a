package kv

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrWatchClosed is reported when a watcher's update channel closed while
// it was still wanted (nats.go closes it when the connection is lost).
var ErrWatchClosed = errors.New("kv: watch closed by the client library")

// Follower keeps a watch on a key (or a wildcard of keys) alive for as long
// as its context lives. A KeyWatcher's update channel can close when the
// connection is lost (nats.go issue 1777); Follower then watches again,
// with backoff, resuming after the last revision it delivered, so every
// entry is delivered once and in revision order.
type Follower struct {
	Bucket jetstream.KeyValue
	Key    string // a key or a wildcard such as ">"

	// OnEntry receives every entry, puts, deletes and purges alike.
	OnEntry func(jetstream.KeyValueEntry)
	// OnSynced, if set, is called when a (re)established watch has delivered
	// the values present when it started.
	OnSynced func()
	// OnError, if set, is told why a watch ended or could not start; the
	// Follower keeps trying until its context ends.
	OnError func(error)
}

const (
	followMinDelay = 50 * time.Millisecond
	followMaxDelay = 5 * time.Second
)

// Run follows the key until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	var last uint64
	delay := followMinDelay
	for {
		err := f.watchOnce(ctx, &last, func() { delay = followMinDelay })
		if ctx.Err() != nil {
			return
		}
		if f.OnError != nil {
			f.OnError(err)
		}
		// Full jitter, so that a thousand subscribers that lost the same
		// server do not come back in the same millisecond.
		wait := time.Duration(rand.Int64N(int64(delay))) + followMinDelay
		delay = min(2*delay, followMaxDelay)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchOnce runs one watcher until its channel closes or ctx ends.
func (f *Follower) watchOnce(ctx context.Context, last *uint64, healthy func()) error {
	// The watcher's context governs its whole life, and nats.go parks a
	// goroutine on it: give each watcher its own, ended with it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var opts []jetstream.WatchOpt
	if *last > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(*last+1))
	}
	w, err := f.Bucket.Watch(ctx, f.Key, opts...)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return ErrWatchClosed
			}
			if e == nil {
				healthy()
				if f.OnSynced != nil {
					f.OnSynced()
				}
				continue
			}
			if e.Revision() <= *last {
				continue
			}
			*last = e.Revision()
			f.OnEntry(e)
		}
	}
}
