package secretset

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/seal"
)

// Discover asks every replica under prefix for its key and collects the
// answers for window, or until want replicas have answered (want 0: the
// whole window). The leader comes first, then the others by instance.
func Discover(ctx context.Context, nc *nats.Conn, prefix string, window time.Duration, want int) ([]Replica, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(Subjects{prefix}.Replicas(), inbox, nil); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	var replicas []Replica
	seen := map[string]bool{}
	for want == 0 || len(replicas) < want {
		m, err := sub.NextMsgWithContext(ctx)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrNoResponders) {
			break // the window is over, or nobody listens at all
		}
		if err != nil {
			return nil, err
		}
		var r Replica
		if json.Unmarshal(m.Data, &r) != nil || !validID(r.ID) || len(r.PublicKey) != 32 || seen[r.ID] {
			continue // not a replica's answer: nothing to seal to
		}
		seen[r.ID] = true
		replicas = append(replicas, r)
	}
	slices.SortFunc(replicas, func(a, b Replica) int {
		if a.Leading != b.Leading {
			if a.Leading {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Instance, b.Instance)
	})
	return replicas, nil
}

// Check asks replica r whether WeChat accepts secret for the app key, from
// where r stands; nothing changes.
func Check(ctx context.Context, nc *nats.Conn, prefix string, r Replica, key string, secret []byte) (Answer, error) {
	return ask(ctx, nc, Subjects{prefix}.Check(r.ID), r, purposeCheck, key, secret)
}

// Take asks replica r to check secret and use it for the app key.
func Take(ctx context.Context, nc *nats.Conn, prefix string, r Replica, key string, secret []byte) (Answer, error) {
	return ask(ctx, nc, Subjects{prefix}.Take(r.ID), r, purposeTake, key, secret)
}

// ask seals secret to r for purpose and key, and returns r's answer.
func ask(ctx context.Context, nc *nats.Conn, subject string, r Replica, purpose, key string, secret []byte) (Answer, error) {
	box, err := seal.To(r.PublicKey, secret, seal.Context(purpose, key, r.ID))
	if err != nil {
		return Answer{}, err
	}
	data, err := json.Marshal(Request{Key: key, Box: box})
	if err != nil {
		return Answer{}, err
	}
	m, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return Answer{}, err
	}
	var a Answer
	if err := json.Unmarshal(m.Data, &a); err != nil || a.Outcome == "" {
		return Answer{}, fmt.Errorf("secretset: undecodable answer from %s", r.Instance)
	}
	return a, nil
}

// validID reports whether id is a replica's id: 16 hex digits.
func validID(id string) bool {
	b, err := hex.DecodeString(id)
	return err == nil && len(b) == 8
}
