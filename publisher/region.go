package publisher

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/region"
)

// A replica in a region (Config.JSDomain) is connected to the region's
// NATS, and reaches the hub's buckets, its lease among them, through the
// hub's JetStream domain, across the region's leaf connection. So it takes
// and renews the one lease every replica takes, and while it cannot reach
// the hub nothing it asks for is answered: it cannot lead then, whatever
// the partition. The region's copy of the bucket (wxtoken region add) is
// never its bucket: a replica started against it without the domain is
// refused (bucket.ErrReadOnlyCopy), for it would take a lease of the
// region's own and lead beside the hub's leader.

// jetStreamOf is the JetStream of the buckets: the hub's through domain,
// or, with none, the one nc is connected to.
func jetStreamOf(nc *nats.Conn, domain string, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if domain == "" {
		return jetstream.New(nc, opts...)
	}
	return jetstream.NewWithDomain(nc, domain, opts...)
}

// checkDomain checks Config.JSDomain.
func checkDomain(domain string) error {
	if domain == "" {
		return nil
	}
	return region.ValidateDomain(domain)
}
