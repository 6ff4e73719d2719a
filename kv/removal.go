package kv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A key the refresher removes for good (an authorizer that withdrew its
// authorization) is said to be removed three ways, so that a reader in any
// language learns it however it follows the key:
//   - its delete marker in the bucket carries the RemovedHeader, for a
//     reader that watches the key or reads it after a reconnect;
//   - a message on the key's Value subject, with the marker's revision in
//     RevisionHeader, the RemovedHeader and no body, for a subscriber of
//     the values;
//   - a RemovalEvent on the Removed subject, for whoever follows events.
// A value stored later under the key (the account authorizes again) is
// newer than the removal, and ends it.

// RemovedHeader marks a removal, on the delete marker and on the Value
// subject; its value is the reason.
const RemovedHeader = "Wxtoken-Removed"

// RemovedUnauthorized is the reason of a removal: the account withdrew its
// authorization from the platform.
const RemovedUnauthorized = "unauthorized"

// Removed is where the removal of key is announced; ">" matches every key.
func (s Subjects) Removed(key string) string { return s.prefix() + ".removed." + key }

// RemovalEvent is published on the Removed subject once a key is removed.
type RemovalEvent struct {
	AppID     string    `json:"appid"`
	Kind      string    `json:"kind,omitempty"` // as RotationEvent's
	Revision  uint64    `json:"revision"`       // of the delete marker
	Reason    string    `json:"reason"`
	RemovedAt time.Time `json:"removed_at"`
}

// The KV headers of a delete marker, as nats.go writes them.
const (
	kvOperation = "KV-Operation"
	kvDelete    = "DEL"
	kvPurge     = "PURGE"
)

// Remove deletes key from bucket (named bucketName) with a compare-and-swap
// on its revision rev, in a delete marker that says why, and returns the
// marker's revision. A key that moved meanwhile is not removed: the error
// is then jetstream.ErrKeyExists.
func Remove(ctx context.Context, js jetstream.JetStream, bucketName, key string, rev uint64, reason string) (uint64, error) {
	if err := ValidateKey(key); err != nil {
		return 0, fmt.Errorf("kv: %w", err)
	}
	m := nats.NewMsg("$KV." + bucketName + "." + key)
	m.Header.Set(kvOperation, kvDelete)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	m.Header.Set(RemovedHeader, reason)
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// RemovalMsg is the message that tells the subscribers of key's values
// that it was removed at revision, for reason.
func RemovalMsg(subjects Subjects, key string, revision uint64, reason string) *nats.Msg {
	m := nats.NewMsg(subjects.Value(key))
	m.Header.Set(RevisionHeader, strconv.FormatUint(revision, 10))
	m.Header.Set(RemovedHeader, reason)
	return m
}

// RemovalReason returns the reason a message (on a Value subject, or a
// delete marker read from the bucket) says its key was removed for, or ""
// when it says no such thing.
func RemovalReason(h nats.Header) string { return h.Get(RemovedHeader) }

// LastRemoval reads the last message of key in bucket and, if it is a
// removal, returns its revision and reason (none otherwise): for a reader that finds
// no value under the key, and must tell a key removed for good from one
// deleted by someone (which the refresher writes again) or never written.
func LastRemoval(ctx context.Context, js jetstream.JetStream, bucketName, key string) (revision uint64, reason string, err error) {
	stream, err := js.Stream(ctx, "KV_"+bucketName)
	if err != nil {
		return 0, "", err
	}
	m, err := stream.GetLastMsgForSubject(ctx, "$KV."+bucketName+"."+key)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, "", nil
	case err != nil:
		return 0, "", err
	case m.Header.Get(kvOperation) != kvDelete || RemovalReason(m.Header) == "":
		return 0, "", nil // a value, or a delete that is no removal
	}
	return m.Sequence, RemovalReason(m.Header), nil
}
