package lease

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// Holder reads who holds the lease now, for the status page: one Get of
// the lease key. ok is false when no replica holds it (the key lapsed or
// was released).
func (l *Lease) Holder(ctx context.Context) (h kv.LeaseHolder, ok bool, err error) {
	e, err := l.bucket.Get(ctx, kv.LeaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return kv.LeaseHolder{}, false, nil
	}
	if err != nil {
		return kv.LeaseHolder{}, false, err
	}
	h, err = kv.DecodeLeaseHolder(e.Value())
	return h, err == nil, err
}
