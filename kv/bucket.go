package kv

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultBucket is the name of the token bucket.
const DefaultBucket = "wechat_tokens"

// BucketConfig describes the token bucket the refresher manages.
type BucketConfig struct {
	Name     string   // DefaultBucket when empty
	Replicas int      // 1 when zero; 3 in a three-node cluster
	History  int      // revisions kept per key; 1 when zero, at most 64
	Subjects Subjects // where values are republished (Subjects.Value)
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
		// Tells subscribers that the refresher publishes every value it
		// stores on the Value subjects (see PublishesValues).
		Metadata: map[string]string{valuesMetadata: cfg.Subjects.Value(">")},
	})
	if err != nil {
		return nil, fmt.Errorf("kv: open bucket %q: %w", cfg.Name, err)
	}
	return b, nil
}

// StreamName is the name of the JetStream stream behind the bucket name.
func StreamName(bucket string) string { return "KV_" + bucket }

// ErrRevisionsWentBack is returned by Recreate when the bucket exists again
// with values written and revisions below the ones readers may hold.
var ErrRevisionsWentBack = errors.New("kv: the bucket was created again by someone else, and its revisions start over")

// Recreate creates the token bucket again after it was deleted, as Open
// would, with its revisions continuing after last, the newest revision the
// caller has seen: readers ignore a revision no newer than the one they
// hold, so a bucket starting over at 1 would have them ignore every value
// until their token died. A bucket that exists already (created again by
// another replica, or by an operator) is returned as Open returns it; if
// values were written to it at revisions not past last, the error wraps
// ErrRevisionsWentBack.
func Recreate(ctx context.Context, js jetstream.JetStream, cfg BucketConfig, last uint64) (jetstream.KeyValue, error) {
	b, err := Open(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	stream, err := js.Stream(ctx, StreamName(b.Bucket()))
	if err != nil {
		return nil, fmt.Errorf("kv: recreate bucket %q: %w", b.Bucket(), err)
	}
	state := stream.CachedInfo().State
	switch {
	case state.LastSeq >= last:
		return b, nil
	case state.Msgs > 0:
		return b, fmt.Errorf("%w (bucket %q, revision %d, readers may hold %d)", ErrRevisionsWentBack, b.Bucket(), state.LastSeq, last)
	}
	// Purging an empty stream up to a sequence past its last one moves its
	// next sequence there, on every nats-server with JetStream (a stream's
	// first_seq setting needs 2.10).
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(last+1)); err != nil {
		return nil, fmt.Errorf("kv: recreate bucket %q: continue revisions after %d: %w", b.Bucket(), last, err)
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

// valuesMetadata is the bucket metadata key naming where values are published.
const valuesMetadata = "wxtoken.values"

// PublishesValues reports whether the refresher of bucket publishes each
// value it stores on the Value subjects of subjects, so that a subscriber
// can follow its token with a core subscription instead of a KV watch,
// which needs a JetStream consumer per subscriber (servers allow 1000 per
// stream by default, and each costs heartbeats and memory). Servers older
// than 2.10 keep no bucket metadata: there it is false.
func PublishesValues(ctx context.Context, bucket jetstream.KeyValue, subjects Subjects) (bool, error) {
	st, err := bucket.Status(ctx)
	if err != nil {
		return false, err
	}
	kvs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return false, nil
	}
	return kvs.StreamInfo().Config.Metadata[valuesMetadata] == subjects.Value(">"), nil
}

// RevisionHeader carries the bucket revision of a value published on a
// Value subject.
const RevisionHeader = "Wxtoken-Revision"

// ValueMsg is the message that announces the value stored under appid at
// revision: the record as stored, its revision in a header.
func ValueMsg(subjects Subjects, appid string, revision uint64, record []byte) *nats.Msg {
	m := nats.NewMsg(subjects.Value(appid))
	m.Header.Set(RevisionHeader, strconv.FormatUint(revision, 10))
	m.Data = record
	return m
}

// DecodeValueMsg returns the revision and record of a value message.
func DecodeValueMsg(m *nats.Msg) (revision uint64, record []byte, err error) {
	revision, err = strconv.ParseUint(m.Header.Get(RevisionHeader), 10, 64)
	if err != nil || revision == 0 {
		return 0, nil, fmt.Errorf("kv: value message on %s without a revision", m.Subject)
	}
	return revision, m.Data, nil
}
