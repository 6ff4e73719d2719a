// Package secretset is the protocol of `wxtoken secret set`, both ends:
// the command finds the replicas, has the leader check a new secret and
// every replica take it; each replica answers for itself. A secret never
// crosses NATS in the clear: it is sealed (internal/seal) to the one
// replica it is for, bound to the app and to what it is for.
//
// Subjects, under the deployment's prefix (wechat.token):
//
//	<prefix>.admin.secret.replicas        every replica answers: its id, instance, public key, whether it leads
//	<prefix>.admin.secret.check.<replica> that replica probes the secret and changes nothing
//	<prefix>.admin.secret.take.<replica>  that replica probes it, uses it, and persists it if it can
//
// nats.conf lets only the refresher subscribe to them and only the admin
// publish on them.
package secretset

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/wxtoken/wxtoken/internal/seal"
)

// Purposes a box is sealed for: a box sealed for a check cannot be taken.
const (
	purposeCheck = "check"
	purposeTake  = "take"
)

// Subjects of one deployment's prefix.
type Subjects struct{ Prefix string }

// Replicas is the discovery subject.
func (s Subjects) Replicas() string { return s.Prefix + ".admin.secret.replicas" }

// Check is where replica checks a secret.
func (s Subjects) Check(replica string) string { return s.Prefix + ".admin.secret.check." + replica }

// Take is where replica takes a secret.
func (s Subjects) Take(replica string) string { return s.Prefix + ".admin.secret.take." + replica }

// Replica is a replica's answer to discovery.
type Replica struct {
	ID        string `json:"replica"`    // new at every start; names its subjects
	Instance  string `json:"instance"`   // serve --instance, for people
	PublicKey []byte `json:"public_key"` // X25519, new at every start
	Leading   bool   `json:"leading"`
}

// Request asks a replica to check or take the secret of the app Key.
type Request struct {
	Key string   `json:"key"`
	Box seal.Box `json:"box"`
}

// Outcome is what a replica did with a secret.
type Outcome string

const (
	// Checked: WeChat accepts the secret from this replica (a check).
	Checked Outcome = "checked"
	// Taken: the replica uses the secret, and wrote it where it read the
	// one before (its secret file).
	Taken Outcome = "taken"
	// Held: the replica uses the secret, but holds it in memory only: the
	// one before came from an environment variable or the apps file
	// itself, which it does not write (or its file could not be written).
	// A restart would read the old one: Message says what to update.
	Held Outcome = "held"
	// Refused: WeChat refused the secret (ErrCode says why), or it could
	// not be checked from this replica; nothing changed.
	Refused Outcome = "refused"
	// Unknown: the replica has no app of that key; nothing changed.
	Unknown Outcome = "unknown_app"
	// Invalid: the request did not open or decode; nothing changed.
	Invalid Outcome = "bad_request"
)

// Answer is a replica's answer to a check or a take. It never holds the
// secret.
type Answer struct {
	Outcome Outcome `json:"outcome"`
	ErrCode int     `json:"errcode,omitempty"` // WeChat's, when WeChat answered the probe with an error
	Message string  `json:"message,omitempty"` // what happened, for the operator
}

// Took reports whether the replica uses the secret now.
func (a Answer) Took() bool { return a.Outcome == Taken || a.Outcome == Held }

// newID is a replica's id: 16 hex digits, a subject token.
func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("secretset: %w", err)
	}
	return hex.EncodeToString(b), nil
}
