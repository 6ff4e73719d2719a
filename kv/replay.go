package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The pushes a platform's callback took in are remembered in a bucket of
// their own, shared by every replica, so that one replayed to another
// replica is refused as it is by the replica that took it: a key per
// msg_signature, created once, gone after ReplayWindow by the bucket's
// MaxAge. Per-key TTLs would need nats-server 2.11; MaxAge works on 2.9.

// ReplayBucket is the name of the replay bucket beside the platform bucket
// platformBucket: "<platform bucket>_replay".
func ReplayBucket(platformBucket string) string { return platformBucket + "_replay" }

// ReplayWindow is how long a push is remembered. A push is taken in while
// its timestamp is within 10 minutes of the clock, before or after it, so
// one taken in now may be replayed for up to 20 minutes.
const ReplayWindow = 20 * time.Minute

// ReplayConfig is the replay bucket's configuration.
func ReplayConfig(platformBucket string, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      ReplayBucket(platformBucket),
		Description: "wxtoken: the msg_signatures of the platforms' pushes taken in, to refuse their replays (refresher only)",
		History:     1,
		TTL:         ReplayWindow,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	}
}

// TakenPush is the value under a push's msg_signature: which platform it
// was for and when it was taken in, for an operator who looks.
type TakenPush struct {
	ComponentAppID string    `json:"component_appid"`
	TakenAt        time.Time `json:"taken_at"`
}

// ErrInvalidSignature is returned for a msg_signature that is not 40 hex
// digits (a SHA-1), which no genuine push has.
var ErrInvalidSignature = errors.New("kv: a msg_signature is 40 hex digits")

func checkSignature(sig string) error {
	if len(sig) != 40 {
		return ErrInvalidSignature
	}
	for _, c := range sig {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return ErrInvalidSignature
		}
	}
	return nil
}

// PushTaken reports whether a push of this msg_signature was taken in
// within ReplayWindow.
func PushTaken(ctx context.Context, b jetstream.KeyValue, sig string) (bool, error) {
	if err := checkSignature(sig); err != nil {
		return false, err
	}
	_, err := b.Get(ctx, sig)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// TakePush records that the push of this msg_signature was taken in. One
// recorded already (the same push taken in by another replica at the same
// moment) stays as it is.
func TakePush(ctx context.Context, b jetstream.KeyValue, sig string, p TakenPush) error {
	if err := checkSignature(sig); err != nil {
		return err
	}
	if err := ValidateAppID(p.ComponentAppID); err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	p.TakenAt = p.TakenAt.UTC()
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := b.Create(ctx, sig, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	return nil
}
