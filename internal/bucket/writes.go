package bucket

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// What the refresher's writes to its buckets (the token bucket, the lease,
// the platform bucket) have in common.

// Timeout bounds one bucket operation.
const Timeout = 5 * time.Second

// IsConflict reports whether err is a compare-and-swap that lost: the key
// exists, or moved on from the revision named.
func IsConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// MayBeGone reports whether err is what a bucket operation returns when
// the bucket's stream does not exist. A stream between leaders answers
// some of these too, so the stream is looked up before anything is
// created.
func MayBeGone(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound)
}

// AwaitConnection returns once nc is connected, closed for good, or ctx
// ends. What is sent while nats.go reconnects waits in its buffer and goes
// out when the connection is back, however long after its sender gave up
// on it: a write that must not land late waits here first.
func AwaitConnection(ctx context.Context, nc *nats.Conn) {
	changed := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(changed)
	for {
		if st := nc.Status(); st == nats.CONNECTED || st == nats.CLOSED {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
