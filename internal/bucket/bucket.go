// Package bucket creates and repairs the token bucket for the refresher:
// its configuration, and revisions that grow across its deletion and
// re-creation. Readers need none of it: they bind the bucket with kv.Bind.
package bucket

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// Config describes the token bucket the refresher manages.
type Config struct {
	Name     string      // kv.DefaultBucket when empty
	Replicas int         // 1 when zero; 3 in a three-node cluster
	History  int         // revisions kept per key; 1 when zero, at most 64
	Subjects kv.Subjects // where values are published (Subjects.Value)
}

// Open creates the token bucket, or updates an existing one to cfg, and
// returns it. The revisions of a bucket it creates, or finds empty, start
// at the bucket's creation time in Unix milliseconds (see revisionFloor).
// Only the refresher calls Open: readers Bind, so that they need no
// permission to manage streams.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, error) {
	b, _, err := open(ctx, js, cfg, 0)
	return b, err
}

// Recreate makes the token bucket fit to write to after it was deleted or
// created again: it opens it as Open does and, if the bucket's last
// revision is below last, the newest revision the caller has seen, moves
// its revisions past last (by revisionMargin), carrying its values over.
// Readers may hold revisions up to last and ignore any revision no newer
// than theirs. moved says whether the revisions were moved.
//
// It must not race writes of its own caller; another writer's value that
// lands while it runs may be lost.
func Recreate(ctx context.Context, js jetstream.JetStream, cfg Config, last uint64) (b jetstream.KeyValue, moved bool, err error) {
	return open(ctx, js, cfg, last)
}

// StreamName is the name of the JetStream stream behind the bucket name.
func StreamName(bucket string) string { return "KV_" + bucket }

// CopyOf reports whether the stream of info is a copy of a bucket in
// another JetStream domain (a region's copy of the hub's: a mirror whose
// origin is reached through that domain's API), and that domain.
func CopyOf(info *jetstream.StreamInfo) (domain string, ok bool) {
	m := info.Config.Mirror
	if m == nil || m.External == nil {
		return "", false
	}
	domain, ok = strings.CutPrefix(m.External.APIPrefix, "$JS.")
	if !ok {
		return "", false
	}
	domain, ok = strings.CutSuffix(domain, ".API")
	return domain, ok && domain != "" && !strings.Contains(domain, ".")
}

// ErrReadOnlyCopy is returned by Open for a bucket that is a mirror: a
// region's copy of the hub's bucket, which only the hub's refresher
// writes, through the hub's. A refresher that took it for the bucket would
// also take a lease of the region's own, and lead beside the hub's leader.
var ErrReadOnlyCopy = errors.New("bucket: the bucket here is a read-only copy")

// refuseCopy returns ErrReadOnlyCopy, saying how to reach the bucket it
// copies, if the bucket name is a mirror.
func refuseCopy(ctx context.Context, js jetstream.JetStream, name string) error {
	stream, err := js.Stream(ctx, StreamName(name))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bucket: look at %q: %w", name, err)
	}
	info := stream.CachedInfo()
	if domain, ok := CopyOf(info); ok {
		return fmt.Errorf("%w of the bucket %q of JetStream domain %q (this is a region's NATS): "+
			"a refresher in a region leads only through the hub's buckets: give it --hub-domain %s", ErrReadOnlyCopy, name, domain, domain)
	}
	if info.Config.Mirror != nil {
		return fmt.Errorf("%w: %q mirrors %s: run the refresher against the bucket it mirrors", ErrReadOnlyCopy, name, info.Config.Mirror.Name)
	}
	return nil
}

// revisionMargin is how far past the last revision its caller saw the
// revisions of a recreated bucket begin: it covers writes the caller's
// watch had not delivered yet, and costs nothing.
const revisionMargin = 1000

// revisionFloor is the first revision of a bucket created at created: its
// creation time in Unix milliseconds, on the server's clock. So revisions
// grow across a deletion and re-creation of the bucket with no memory of
// the old ones, as long as a bucket sees fewer writes than milliseconds
// pass (a token bucket sees a few a second at most), and readers, which
// ignore a revision no newer than theirs, take in what the new bucket
// holds.
func revisionFloor(created time.Time) uint64 { return uint64(max(created.UnixMilli(), 1)) }

// Behind reports whether the revisions of the bucket whose stream info is
// info are behind where they must be: an empty bucket below its creation
// time (created by someone else), or any below last, the newest revision
// a reader may hold (0: not known). A bucket with values below its
// creation time (one an older wxtoken created, or someone else filled) is
// left as it is unless it is below last: moving it means carrying values
// over, which only the leader may do, and only when it must.
func Behind(info *jetstream.StreamInfo, last uint64) bool {
	empty := info.State.Msgs == 0 && info.State.LastSeq+1 < revisionFloor(info.Created)
	return empty || info.State.LastSeq < last
}

func open(ctx context.Context, js jetstream.JetStream, cfg Config, last uint64) (jetstream.KeyValue, bool, error) {
	if cfg.Name == "" {
		cfg.Name = kv.DefaultBucket
	}
	if cfg.History < 0 || cfg.History > jetstream.KeyValueMaxHistory {
		return nil, false, fmt.Errorf("bucket: history %d is not between 1 and %d", cfg.History, jetstream.KeyValueMaxHistory)
	}
	if cfg.Replicas < 0 {
		return nil, false, fmt.Errorf("bucket: replicas %d is negative", cfg.Replicas)
	}
	// Updating a mirror into a bucket of its own is not refused by every
	// server: look first.
	if err := refuseCopy(ctx, js, cfg.Name); err != nil {
		return nil, false, err
	}
	b, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       cfg.Name,
		Description:  "wxtoken: WeChat access_token records by appid",
		History:      uint8(cfg.History),
		Replicas:     cfg.Replicas,
		Storage:      jetstream.FileStorage,
		MaxValueSize: kv.MaxRecordSize,
		Metadata:     kv.Metadata(cfg.Subjects),
	})
	if err != nil {
		return nil, false, fmt.Errorf("bucket: open %q: %w", cfg.Name, err)
	}
	moved, err := settle(ctx, js, b, last)
	if err != nil {
		return nil, false, fmt.Errorf("bucket: open %q: %w", cfg.Name, err)
	}
	return b, moved, nil
}

// settle moves b's revisions to its floor if it is empty and below it,
// and past last (if not 0) if its last revision is below last, carrying
// its values over. It reports whether it moved them.
func settle(ctx context.Context, js jetstream.JetStream, b jetstream.KeyValue, last uint64) (bool, error) {
	stream, err := js.Stream(ctx, StreamName(b.Bucket()))
	if err != nil {
		return false, fmt.Errorf("look at its stream: %w", err)
	}
	info := stream.CachedInfo()
	if !Behind(info, last) {
		return false, nil
	}
	next := revisionFloor(info.Created)
	if info.State.LastSeq < last {
		next = max(next, last+revisionMargin+1)
	}
	var carried []jetstream.KeyValueEntry
	if info.State.Msgs > 0 {
		if carried, err = kv.ReadAll(ctx, b); err != nil {
			return false, fmt.Errorf("read what it holds: %w", err)
		}
	}
	if len(carried) > 0 {
		// From the purge on, the values are only in memory until carried
		// back: the rest runs on a time of its own, whatever becomes of
		// ctx.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), carryBudget(len(carried)))
		defer cancel()
	}
	// Purging a stream up to a sequence past its last one moves its next
	// sequence there, on every nats-server with JetStream (a stream's
	// first_seq setting needs 2.10, and an empty stream).
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(next)); err != nil {
		// The answer may be lost with the purge done: look.
		info, ierr := stream.Info(ctx)
		if ierr != nil || info.State.FirstSeq < next {
			return false, fmt.Errorf("move its revisions to %d: %w", next, err)
		}
	}
	return true, carry(ctx, js, b.Bucket(), carried)
}

// carryBudget is the time a move has to purge and write back n values.
func carryBudget(n int) time.Duration { return 10*time.Second + time.Duration(n)*time.Millisecond }

// carryBatch is how many values carry has in flight at once.
const carryBatch = 256

// carry writes entries back into bucket, a batch at a time. A key written
// meanwhile by someone else keeps what they wrote.
func carry(ctx context.Context, js jetstream.JetStream, bucket string, entries []jetstream.KeyValueEntry) error {
	lost := 0
	var first error
	for start := 0; start < len(entries); start += carryBatch {
		batch := entries[start:min(start+carryBatch, len(entries))]
		acks := make([]jetstream.PubAckFuture, 0, len(batch))
		for _, e := range batch {
			// The subject of a key's values, as jetstream.KeyValue.Put
			// uses; a key that is not empty any more is newer.
			ack, err := js.PublishAsync("$KV."+bucket+"."+e.Key(), e.Value(), jetstream.WithExpectLastSequencePerSubject(0))
			if err != nil {
				lost++
				first = cmp.Or(first, err)
				continue
			}
			acks = append(acks, ack)
		}
		for _, ack := range acks {
			select {
			case <-ack.Ok():
			case err := <-ack.Err():
				if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
					lost++
					first = cmp.Or(first, err)
				}
			case <-ctx.Done():
				lost++
				first = cmp.Or(first, ctx.Err())
			}
		}
	}
	if lost > 0 {
		return fmt.Errorf("carry its values over: %d of %d not written: %w", lost, len(entries), first)
	}
	return nil
}

// isWrongLastSequence reports whether err is JetStream's answer to a write
// that expected another last sequence.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
