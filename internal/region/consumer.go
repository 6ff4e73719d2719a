package region

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
)

// A copy's durable consumer lives at the hub, on the hub's bucket: the
// copy's server resets it to where the copy stands whenever it takes it up,
// and, cut off, listens on its deliver subject, so that the consumer's
// first heartbeat after the heal brings it back at once (nats-server
// 2.15). The ephemeral consumer of older servers is created again by the
// copy only on a backoff that runs on after the heal. A consumer of the
// hub's is gone with the hub's bucket (a deletion the refresher repairs):
// Monitor puts it back, and so does region add, run again.

// consumerName is the hub's consumer of region's copy.
func consumerName(region string) string { return "wxtoken_region_" + region }

// deliverSubject is where that consumer delivers: a subject the hub's
// leaf permissions let through to the regions ($JS.M.>, as a mirror's own).
func deliverSubject(region, bucketName string) string {
	return "$JS.M.wxtoken." + region + "." + bucketName
}

// consumerConfig is the configuration nats-server requires of a durable
// consumer a mirror follows (ADR-60): pushed with flow control, acked by
// it, heartbeats every second.
func consumerConfig(region, bucketName string, filters []string) jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:        consumerName(region),
		Description:    fmt.Sprintf("wxtoken: region %s's copy of %s follows it", region, bucketName),
		DeliverSubject: deliverSubject(region, bucketName),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckFlowControlPolicy,
		FlowControl:    true,
		IdleHeartbeat:  time.Second,
		MaxAckPending:  10000,
	}
	if len(filters) == 1 {
		c.FilterSubject = filters[0]
	} else {
		c.FilterSubjects = filters
	}
	return c
}

// ensureConsumer creates in hub, the hub's JetStream, the consumer that
// region's copy of bucketName follows, or finds it there, and returns it
// for the copy's configuration. A hub older than 2.14 knows no such
// consumer: then it returns nil, and the copy makes ephemeral ones.
func ensureConsumer(ctx context.Context, hub jetstream.JetStream, region, bucketName string, filters []string) (*jetstream.StreamConsumerSource, error) {
	cfg := consumerConfig(region, bucketName, filters)
	_, err := hub.CreateOrUpdateConsumer(ctx, bucket.StreamName(bucketName), cfg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.Code == 400 {
		return nil, nil // a server that does not know flow-control acks
	}
	if err != nil {
		return nil, fmt.Errorf("region: create the hub's consumer %s for the copy: %w", cfg.Durable, err)
	}
	return &jetstream.StreamConsumerSource{Name: cfg.Durable, DeliverSubject: cfg.DeliverSubject}, nil
}
