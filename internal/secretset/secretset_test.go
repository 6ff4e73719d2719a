package secretset_test

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/internal/seal"
	"github.com/wxtoken/wxtoken/internal/secretset"
)

const (
	prefix = "wechat.token"
	appid  = "wx1234567890abcdef"
	secret = "0123456789abcdef0123456789abcdef"
)

// handler records what a replica was handed.
type handler struct {
	mu     sync.Mutex
	checks []string
	takes  []string
}

func (h *handler) Check(_ context.Context, key string, s []byte) secretset.Answer {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, key+"="+string(s))
	return secretset.Answer{Outcome: secretset.Checked}
}

func (h *handler) Take(_ context.Context, key string, s []byte) secretset.Answer {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.takes = append(h.takes, key+"="+string(s))
	return secretset.Answer{Outcome: secretset.Taken}
}

func serve(t *testing.T, nc *nats.Conn, instance string, leading bool, h secretset.Handler) *secretset.Server {
	t.Helper()
	s, err := secretset.Serve(nc, prefix, instance, func() bool { return leading }, h, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestSecretReachesOnlyItsReplicaAndNeverTheWire: two replicas found,
// the leader first; each opens only the copy sealed to it, for what it
// was sealed for; and nothing published on NATS holds the secret.
func TestSecretReachesOnlyItsReplicaAndNeverTheWire(t *testing.T) {
	nc, _ := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wire [][]byte
	var wireMu sync.Mutex
	tap, err := nc.Subscribe(">", func(m *nats.Msg) {
		wireMu.Lock()
		wire = append(wire, append([]byte(m.Subject+" "), m.Data...))
		wireMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	var leaderH, standbyH handler
	leader := serve(t, nc, "b-leader", true, &leaderH)
	standby := serve(t, nc, "a-standby", false, &standbyH)

	replicas, err := secretset.Discover(ctx, nc, prefix, 5*time.Second, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(replicas) != 2 || replicas[0].ID != leader.ID() || !replicas[0].Leading || replicas[1].ID != standby.ID() {
		t.Fatalf("discovered %+v: want the leader, then the standby", replicas)
	}
	if a, err := secretset.Check(ctx, nc, prefix, replicas[0], appid, []byte(secret)); err != nil || a.Outcome != secretset.Checked {
		t.Fatalf("check: %+v, %v", a, err)
	}
	for _, r := range replicas {
		if a, err := secretset.Take(ctx, nc, prefix, r, appid, []byte(secret)); err != nil || !a.Took() {
			t.Fatalf("take on %s: %+v, %v", r.Instance, a, err)
		}
	}
	want := appid + "=" + secret
	if len(leaderH.checks) != 1 || leaderH.checks[0] != want || len(standbyH.checks) != 0 {
		t.Errorf("checks: leader %q, standby %q; want one on the leader", leaderH.checks, standbyH.checks)
	}
	if len(leaderH.takes) != 1 || leaderH.takes[0] != want || len(standbyH.takes) != 1 || standbyH.takes[0] != want {
		t.Errorf("takes: leader %q, standby %q; want one each", leaderH.takes, standbyH.takes)
	}

	// A copy sealed to the standby, sent to the leader; a check's copy
	// sent as a take; a copy for another app: none opens, nothing is
	// handed on.
	sealed := func(r secretset.Replica, purpose, key string) []byte {
		box, err := seal.To(r.PublicKey, []byte(secret), seal.Context(purpose, key, r.ID))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(secretset.Request{Key: appid, Box: box})
		return data
	}
	subjects := secretset.Subjects{Prefix: prefix}
	for name, req := range map[string]struct {
		subject string
		data    []byte
	}{
		"another replica's copy": {subjects.Take(leader.ID()), sealed(replicas[1], "take", appid)},
		"a check's copy taken":   {subjects.Take(leader.ID()), sealed(replicas[0], "check", appid)},
		"another app's copy":     {subjects.Take(leader.ID()), sealed(replicas[0], "take", "wx0000000000000000")},
		"not a request":          {subjects.Check(leader.ID()), []byte("{")},
	} {
		m, err := nc.RequestWithContext(ctx, req.subject, req.data)
		if err != nil {
			t.Fatal(err)
		}
		var a secretset.Answer
		if err := json.Unmarshal(m.Data, &a); err != nil || a.Outcome != secretset.Invalid {
			t.Errorf("%s: answered %s, want bad_request", name, m.Data)
		}
	}
	if len(leaderH.takes) != 1 || len(leaderH.checks) != 1 {
		t.Errorf("a copy that does not open reached the handler: %q %q", leaderH.takes, leaderH.checks)
	}

	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = tap.Unsubscribe()
	wireMu.Lock()
	defer wireMu.Unlock()
	if len(wire) < 9 {
		t.Fatalf("the tap saw %d messages, want every request and answer", len(wire))
	}
	for _, m := range wire {
		if bytes.Contains(m, []byte(secret)) || bytes.Contains(m, []byte(secret[:12])) {
			t.Fatalf("the secret crossed NATS in the clear: %s", m)
		}
	}
}

func TestDiscoverWithNoReplicaFindsNone(t *testing.T) {
	nc, _ := natstest.JetStream(t)
	replicas, err := secretset.Discover(context.Background(), nc, prefix, 200*time.Millisecond, 0)
	if err != nil || len(replicas) != 0 {
		t.Fatalf("%+v, %v; want none", replicas, err)
	}
}
