package kv

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultBucket is the name of the token bucket.
const DefaultBucket = "wechat_tokens"

// BucketConfig describes the token bucket the refresher manages.
type BucketConfig struct {
	Name     string // DefaultBucket when empty
	Replicas int    // 1 when zero; 3 in a three-node cluster
	History  int    // revisions kept per key; 1 when zero, at most 64
}

// Open creates the token bucket, or updates an existing one to cfg, and
// returns it. Only the refresher calls Open: readers Bind, so that they need
// no permission to manage streams.
func Open(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (jetstream.KeyValue, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultBucket
	}
	if cfg.History < 0 || cfg.History > jetstream.KeyValueMaxHistory {
		return nil, fmt.Errorf("kv: history %d is not between 1 and %d", cfg.History, jetstream.KeyValueMaxHistory)
	}
	if cfg.Replicas < 0 {
		return nil, fmt.Errorf("kv: replicas %d is negative", cfg.Replicas)
	}
	b, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       cfg.Name,
		Description:  "wxtoken: WeChat access_token records by appid",
		History:      uint8(cfg.History),
		Replicas:     cfg.Replicas,
		Storage:      jetstream.FileStorage,
		MaxValueSize: MaxRecordSize,
	})
	if err != nil {
		return nil, fmt.Errorf("kv: open bucket %q: %w", cfg.Name, err)
	}
	return b, nil
}

// ErrNoBucket is returned by Bind when the bucket does not exist yet, which
// means no refresher has started against this NATS.
var ErrNoBucket = errors.New("kv: token bucket does not exist (has a refresher ever run here?)")

// Bind returns the existing bucket name (DefaultBucket when empty).
func Bind(ctx context.Context, js jetstream.JetStream, name string) (jetstream.KeyValue, error) {
	if name == "" {
		name = DefaultBucket
	}
	b, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %q", ErrNoBucket, name)
	}
	if err != nil {
		return nil, fmt.Errorf("kv: bind bucket %q: %w", name, err)
	}
	return b, nil
}
