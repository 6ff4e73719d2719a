package kvwatch

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrWatchClosed is reported when a watcher's update channel closed while
// it was still wanted (nats.go closes it when the connection is lost).
var ErrWatchClosed = errors.New("kvwatch: watch closed by the client library")

// ErrReconnected is reported when the connection came back and the watch
// is established anew.
var ErrReconnected = errors.New("kvwatch: reconnected; watching again")

// ErrRewatch is reported when a watch is established anew on request.
var ErrRewatch = errors.New("kvwatch: watching again on request")

// Follower keeps a watch on a key (or a wildcard of keys) alive for as long
// as its context lives. A KeyWatcher's update channel can close when the
// connection is lost (nats.go issue 1777); Follower then watches again,
// with backoff, resuming after the last revision it delivered, so every
// entry is delivered once and in revision order.
//
// With Conn set, it also watches again right after the connection comes
// back: the server may have restarted and lost the watch's consumer, and
// nats.go's ordered consumer notices that only after missing two 5s
// heartbeat periods, up to 20s in which no update would arrive.
type Follower struct {
	Bucket jetstream.KeyValue
	Key    string     // a key or a wildcard such as ">"
	Keys   []string   // several keys (or wildcards), in place of Key
	Conn   *nats.Conn // the bucket's connection; optional

	// OnEntry receives every entry, puts, deletes and purges alike.
	OnEntry func(jetstream.KeyValueEntry)
	// OnSynced, if set, is called when a (re)established watch has delivered
	// the values present when it started.
	OnSynced func()
	// OnError, if set, is told why a watch ended or could not start; the
	// Follower keeps trying until its context ends.
	OnError func(error)
	// Rewatch, if set, makes the Follower watch anew, from the revision
	// after the last it delivered, each time it receives: after the
	// bucket was created again, say, whose loss nats.go's watch may take
	// tens of seconds to notice.
	Rewatch <-chan struct{}
}

const (
	followMinDelay  = 50 * time.Millisecond
	followMaxDelay  = 5 * time.Second
	reconnectJitter = 100 * time.Millisecond
)

// Run follows the key until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	var reconnected chan nats.Status
	if f.Conn != nil {
		reconnected = f.Conn.StatusChanged(nats.CONNECTED)
		defer f.Conn.RemoveStatusListener(reconnected)
	}
	var last uint64
	delay := followMinDelay
	// Watchers are stopped on goroutines of their own (see watchOnce); Run
	// waits for them, so that nothing it started outlives it.
	var stopping sync.WaitGroup
	defer stopping.Wait()
	for {
		err := f.watchOnce(ctx, &last, func() { delay = followMinDelay }, reconnected, &stopping)
		if ctx.Err() != nil {
			return
		}
		if f.OnError != nil {
			f.OnError(err)
		}
		// Full jitter, so that a thousand subscribers that lost the same
		// server do not come back in the same millisecond.
		wait := time.Duration(rand.Int64N(int64(delay))) + followMinDelay
		if errors.Is(err, ErrReconnected) || errors.Is(err, ErrRewatch) {
			wait = time.Duration(rand.Int64N(int64(reconnectJitter)))
		} else {
			delay = min(2*delay, followMaxDelay)
		}
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
func (f *Follower) watchOnce(ctx context.Context, last *uint64, healthy func(), reconnected <-chan nats.Status, stopping *sync.WaitGroup) error {
	// The watcher's context governs its whole life, and nats.go parks a
	// goroutine on it: give each watcher its own, ended with it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var opts []jetstream.WatchOpt
	if *last > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(*last+1))
	}
	var w jetstream.KeyWatcher
	var err error
	if len(f.Keys) > 0 {
		w, err = f.Bucket.WatchFiltered(ctx, slices.Clone(f.Keys), opts...) // it writes over the slice
	} else {
		w, err = f.Bucket.Watch(ctx, f.Key, opts...)
	}
	if err != nil {
		return err
	}
	// Stop deletes the watch's consumer with a JetStream request, which
	// waits out its timeout while the server is unreachable: the next watch
	// should not wait for that (the server drops an inactive consumer
	// anyway), only the end of Run.
	defer stopping.Go(func() { w.Stop() })
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-reconnected:
			return ErrReconnected
		case <-f.Rewatch:
			return ErrRewatch
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
