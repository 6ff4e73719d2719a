package kv

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// What each refresher replica could lead: the key ReplicaKey(instance) in
// the bucket ReplicasBucket(token bucket), whose value is a ReplicaState
// in JSON. Every replica rewrites its key a few times per lease TTL, and
// the bucket's MaxAge is the lease TTL, so a key is there exactly while
// its replica is alive. Replicas read it to decide who campaigns for the
// lease; `wxtoken status` reads it to show every replica.

// ReplicasBucket is the name of the replicas bucket of the token bucket
// named tokenBucket.
func ReplicasBucket(tokenBucket string) string { return tokenBucket + "_replicas" }

// ReplicaKey is the key of a replica's state: its instance name, with
// every character a key may not hold (a dot included) made "_".
func ReplicaKey(instance string) string {
	key := strings.Map(func(c rune) rune {
		if isAppIDChar(c) {
			return c
		}
		return '_'
	}, instance)
	if key == "" {
		return "_"
	}
	return key
}

// ReplicaState is the value of a replica's key.
type ReplicaState struct {
	Instance string    `json:"instance"`
	At       time.Time `json:"at"` // when the replica wrote it
	// Standing is true once the replica has read the token bucket and
	// campaigns for the lease or leads: it could take over now.
	Standing bool `json:"standing"`
	Leading  bool `json:"leading"`
	// Probed counts the apps it has a verdict on, of the Configured its
	// probes must judge (every app of its apps file; 0 when its probes are
	// off); CannotLead those whose verdict is that it cannot use them from
	// where it stands, listed in Apps with why.
	Probed     int          `json:"probed"`
	Configured int          `json:"configured"`
	CannotLead int          `json:"cannot_lead"`
	Apps       []ReplicaApp `json:"apps,omitempty"`
}

// Complete reports whether the replica has a verdict on every app it
// probes, so that CannotLead is its whole count and not the part of a
// round under way. A state without Configured (a replica whose probes are
// off, or one from before the field) is complete.
func (s ReplicaState) Complete() bool { return s.Probed >= s.Configured }

// ReplicaApp is an app a replica cannot lead, and why.
type ReplicaApp struct {
	AppID     string    `json:"appid"`
	ErrCode   int       `json:"errcode"`
	Address   string    `json:"address,omitempty"` // the address WeChat refused (40164), as it named it
	Problem   string    `json:"problem"`           // what the errcode means
	Fix       string    `json:"fix"`               // what an operator does about it
	CheckedAt time.Time `json:"checked_at"`
}

// EncodeReplicaState returns the JSON of s.
func EncodeReplicaState(s ReplicaState) []byte {
	s.At = s.At.UTC()
	data, _ := json.Marshal(s) // cannot fail: strings, numbers and times
	return data
}

// DecodeReplicaState decodes the value of a replica's key.
func DecodeReplicaState(data []byte) (ReplicaState, error) {
	if len(data) > MaxRecordSize {
		return ReplicaState{}, fmt.Errorf("kv: replica state of %d bytes", len(data))
	}
	var s ReplicaState
	if err := json.Unmarshal(data, &s); err != nil {
		return ReplicaState{}, fmt.Errorf("kv: replica state: %w", err)
	}
	if s.Instance == "" || s.CannotLead < 0 || s.Probed < 0 || s.Configured < 0 {
		return ReplicaState{}, fmt.Errorf("kv: replica state without an instance or with a negative count")
	}
	return s, nil
}
