package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A third-party platform's (开放平台) state that cannot be fetched again
// lives in a bucket of its own, DefaultPlatformBucket, that only the
// refresher may read or write: the newest component_verify_ticket WeChat
// pushed (without it no component token can be had until the next push),
// and each authorizer's refresh token (without it the authorizer must
// authorize the platform again). Neither is ever logged or published.

// DefaultPlatformBucket is the name of the platform bucket.
const DefaultPlatformBucket = "wechat_platform"

// VerifyTicketKey is the key of a platform's verify ticket:
// "<component_appid>.verify_ticket".
func VerifyTicketKey(componentAppID string) string { return componentAppID + ".verify_ticket" }

// VerifyTicket is the record under VerifyTicketKey: the newest ticket WeChat
// pushed, by its CreateTime.
type VerifyTicket struct {
	ComponentAppID string    `json:"component_appid"`
	Ticket         string    `json:"ticket"`
	CreateTime     time.Time `json:"create_time"` // WeChat's, in the push
	ReceivedAt     time.Time `json:"received_at"`
}

// ErrInvalidPlatformRecord is wrapped by every validation or decoding
// failure of a platform record.
var ErrInvalidPlatformRecord = errors.New("kv: invalid platform record")

// Validate checks the record's fields.
func (t VerifyTicket) Validate() error {
	switch {
	case ValidateAppID(t.ComponentAppID) != nil:
		return fmt.Errorf("%w: component_appid %.40q", ErrInvalidPlatformRecord, t.ComponentAppID)
	case ValidateToken(t.Ticket) != nil:
		return fmt.Errorf("%w: the ticket is not 1 to %d printable characters", ErrInvalidPlatformRecord, MaxTokenLength)
	case t.CreateTime.IsZero() || t.ReceivedAt.IsZero():
		return fmt.Errorf("%w: create_time and received_at are required", ErrInvalidPlatformRecord)
	}
	return nil
}

// EncodeVerifyTicket validates and encodes t.
func EncodeVerifyTicket(t VerifyTicket) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	t.CreateTime, t.ReceivedAt = t.CreateTime.UTC(), t.ReceivedAt.UTC()
	return json.Marshal(t)
}

// DecodeVerifyTicket decodes and validates the record of componentAppID's
// ticket.
func DecodeVerifyTicket(componentAppID string, data []byte) (VerifyTicket, error) {
	var t VerifyTicket
	if len(data) > MaxRecordSize {
		return VerifyTicket{}, fmt.Errorf("%w: %d bytes", ErrInvalidPlatformRecord, len(data))
	}
	if err := json.Unmarshal(data, &t); err != nil {
		return VerifyTicket{}, fmt.Errorf("%w: %v", ErrInvalidPlatformRecord, err)
	}
	if err := t.Validate(); err != nil {
		return VerifyTicket{}, err
	}
	if t.ComponentAppID != componentAppID {
		return VerifyTicket{}, fmt.Errorf("%w: the record names %s, not %s", ErrInvalidPlatformRecord, t.ComponentAppID, componentAppID)
	}
	return t, nil
}

// StoreNewerTicket stores t unless the bucket holds a ticket of the same
// platform pushed no earlier (by CreateTime), and reports whether it did.
// Any replica may call it for a push it received: a compare-and-swap on
// the key's revision makes the newest push win, whatever the order the
// replicas store them in.
func StoreNewerTicket(ctx context.Context, b jetstream.KeyValue, t VerifyTicket) (bool, error) {
	data, err := EncodeVerifyTicket(t)
	if err != nil {
		return false, err
	}
	key := VerifyTicketKey(t.ComponentAppID)
	for {
		e, err := b.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = b.Create(ctx, key, data)
		case err != nil:
			return false, err
		default:
			if held, derr := DecodeVerifyTicket(t.ComponentAppID, e.Value()); derr == nil && !held.CreateTime.Before(t.CreateTime) {
				return false, nil
			}
			_, err = b.Update(ctx, key, data, e.Revision())
		}
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return false, err
		}
		// Another replica stored a ticket meanwhile: compare with it.
	}
}

// isWrongLastSequence reports whether an Update lost its compare-and-swap.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
