package kv

import (
	"encoding/json"
	"fmt"
	"time"
)

// The leader lease of the refresher replicas: the key LeaseKey in the
// bucket LeaseBucket(token bucket), whose value is a LeaseHolder in JSON.
// `wxtoken status` reads it to name the leader.

// LeaseKey is the key of the lease in its bucket.
const LeaseKey = "leader"

// LeaseBucket is the name of the lease bucket of the token bucket named
// tokenBucket.
func LeaseBucket(tokenBucket string) string { return tokenBucket + "_leader" }

// LeaseHolder is the value of the lease key.
type LeaseHolder struct {
	Instance string    `json:"instance"`
	Term     string    `json:"term"` // random per acquisition: tells this holder from a restarted namesake
	Since    time.Time `json:"since"`
}

// EncodeLeaseHolder returns the JSON of h.
func EncodeLeaseHolder(h LeaseHolder) []byte {
	h.Since = h.Since.UTC()
	data, _ := json.Marshal(h) // cannot fail: two strings and a time
	return data
}

// DecodeLeaseHolder decodes the value of the lease key. A value with no
// term is decoded, as a holder no replica can take for its own.
func DecodeLeaseHolder(data []byte) (LeaseHolder, error) {
	if len(data) > MaxRecordSize {
		return LeaseHolder{}, fmt.Errorf("kv: lease of %d bytes", len(data))
	}
	var h LeaseHolder
	if err := json.Unmarshal(data, &h); err != nil {
		return LeaseHolder{}, fmt.Errorf("kv: lease: %w", err)
	}
	return h, nil
}
