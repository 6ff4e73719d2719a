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

// Metadata is the metadata of a token bucket whose refresher publishes its
// values on subjects' Value subjects: readers check it with
// PublishesValues.
func Metadata(subjects Subjects) map[string]string {
	return map[string]string{valuesMetadata: subjects.Value(">")}
}

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

// DecodeValueMsg returns the revision and record of a value message: one
// the refresher published, its revision in RevisionHeader, or one a
// region's copy of the bucket (`wxtoken region add`) republished as it
// stored it, its revision in the stream's Nats-Sequence header. A copy
// keeps the hub's sequences, so both are the hub bucket's revision.
func DecodeValueMsg(m *nats.Msg) (revision uint64, record []byte, err error) {
	text := m.Header.Get(RevisionHeader)
	if text == "" {
		text = m.Header.Get(jetstream.SequenceHeader)
	}
	revision, err = strconv.ParseUint(text, 10, 64)
	if err != nil || revision == 0 {
		return 0, nil, fmt.Errorf("kv: value message on %s without a revision", m.Subject)
	}
	return revision, m.Data, nil
}

// ReadAll returns the newest value of every key of b, or of the keys that
// filters match when there are any, read with one watch that stops once
// it has delivered them. Deleted keys are left out. It returns ctx's error
// when ctx ends first.
func ReadAll(ctx context.Context, b jetstream.KeyValue, filters ...string) ([]jetstream.KeyValueEntry, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var w jetstream.KeyWatcher
	var err error
	if len(filters) == 0 {
		w, err = b.WatchAll(ctx, jetstream.IgnoreDeletes())
	} else {
		w, err = b.WatchFiltered(ctx, filters, jetstream.IgnoreDeletes())
	}
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var all []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, fmt.Errorf("kv: the watch of bucket %s closed before it was read", b.Bucket())
			case e == nil:
				return all, nil
			}
			all = append(all, e)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ValueOperation is what a value message carries: a value, or the delete
// or purge marker of its key, which a region's copy republishes as it
// stores it (the refresher publishes values only, and a removal, which
// RemovalReason tells).
func ValueOperation(h nats.Header) jetstream.KeyValueOp {
	switch h.Get(kvOperation) {
	case kvDelete:
		return jetstream.KeyValueDelete
	case kvPurge:
		return jetstream.KeyValuePurge
	}
	return jetstream.KeyValuePut
}
