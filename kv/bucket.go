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

// revisionMargin is how far past the last revision its caller saw the
// revisions of a recreated bucket begin: it covers writes the caller's
// watch had not delivered yet, and costs nothing.
const revisionMargin = 1000

// Recreate makes the token bucket fit to write to after it was deleted or
// created again. It opens the bucket as Open does; then, if the bucket's
// last revision is below last, the newest revision the caller has seen,
// it moves the bucket's revisions past last. Readers may hold revisions up
// to last and ignore any revision no newer than theirs: in a bucket whose
// revisions started over at 1, they would ignore every new value. What a
// bucket created again already holds (each key's newest value) is carried
// over to new revisions. A bucket at or past last is left as it is.
//
// It must not race writes of its own caller; another writer's value that
// lands while it runs may be lost.
func Recreate(ctx context.Context, js jetstream.JetStream, cfg BucketConfig, last uint64) (jetstream.KeyValue, error) {
	b, err := Open(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (jetstream.KeyValue, error) {
		return nil, fmt.Errorf("kv: recreate bucket %q: %s: %w", b.Bucket(), what, err)
	}
	stream, err := js.Stream(ctx, StreamName(b.Bucket()))
	if err != nil {
		return fail("look it up", err)
	}
	state := stream.CachedInfo().State
	if state.LastSeq >= last {
		return b, nil
	}
	var carried []jetstream.KeyValueEntry
	if state.Msgs > 0 {
		if carried, err = values(ctx, b); err != nil {
			return fail("read what it holds", err)
		}
	}
	// Purging a stream up to a sequence past its last one moves its next
	// sequence there, on every nats-server with JetStream (a stream's
	// first_seq setting needs 2.10, and an empty stream).
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(last+revisionMargin+1)); err != nil {
		return fail(fmt.Sprintf("move its revisions past %d", last), err)
	}
	for _, e := range carried {
		if _, err := b.Put(ctx, e.Key(), e.Value()); err != nil {
			return fail(fmt.Sprintf("write back %s (%d values not carried over)", e.Key(), len(carried)), err)
		}
		carried = carried[1:]
	}
	return b, nil
}

// values returns the newest value of every key in b.
func values(ctx context.Context, b jetstream.KeyValue) ([]jetstream.KeyValueEntry, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var all []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, ErrWatchClosed
			}
			if e == nil {
				return all, nil
			}
			all = append(all, e)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
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
