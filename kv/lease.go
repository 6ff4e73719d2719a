package kv

import "time"

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
