package test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// answerHold holds one of WeChat's answers to a replica on its way back:
// once armed, the next request on path reaches WeChat, which answers it (a
// token is issued, a check decided), and the replica gets the answer only
// at release. The test acts in between, with the outcome already decided.
type answerHold struct {
	path     string
	armed    atomic.Bool
	answered chan struct{}
	released chan struct{}
}

func newAnswerHold(path string) *answerHold {
	return &answerHold{path: path, answered: make(chan struct{}), released: make(chan struct{})}
}

// client returns an HTTP client whose answers on h.path can be held; next
// makes the calls (http.DefaultTransport if nil).
func (h *answerHold) client(next http.RoundTripper) *http.Client {
	if next == nil {
		next = http.DefaultTransport
	}
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(r)
		if err != nil || r.URL.Path != h.path || !h.armed.CompareAndSwap(true, false) {
			return resp, err
		}
		// WeChat has answered in full; only the replica has not heard it.
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		close(h.answered)
		select {
		case <-h.released:
			return resp, nil
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	})}
}

func (h *answerHold) arm()     { h.armed.Store(true) }
func (h *answerHold) release() { close(h.released) }

// await waits until WeChat has answered the held request.
func (h *answerHold) await(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-h.answered:
	case <-ctx.Done():
		t.Fatalf("WeChat never answered a request on %s", h.path)
	}
}

// askRefresh sends a service's refresh request naming stale, as after
// WeChat rejected that revision's token, without waiting for the answer.
func askRefresh(t *testing.T, nc *nats.Conn, appid string, stale uint64) {
	t.Helper()
	req := kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale})
	if err := nc.PublishRequest(kv.Subjects{}.Refresh(appid), nc.NewInbox(), req); err != nil {
		t.Fatal(err)
	}
}

// refreshAnswered sends a refresh request naming stale until a leader
// answers it, and returns the answer.
func refreshAnswered(t *testing.T, ctx context.Context, nc *nats.Conn, appid string, stale uint64) kv.RefreshReply {
	t.Helper()
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		msg, err := nc.RequestWithContext(attempt, kv.Subjects{}.Refresh(appid), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &stale}))
		cancel()
		if err == nil {
			var reply kv.RefreshReply
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				t.Fatalf("reply %q: %v", msg.Data, err)
			}
			return reply
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no leader answered a refresh request: %v", err)
		case <-time.After(10 * time.Millisecond): // no responders yet: the endpoint is starting
		}
	}
}

// TestTokenFetchedBeforeLeaseLossIsStored: the leader is cut off from NATS
// while WeChat's answer to its fetch is on the way, so it cannot write the
// new token and loses its lease. The standby takes over and sees nothing
// due: the bucket's token looks valid to it, though WeChat ended it. Once
// the network heals, the token WeChat issued reaches the bucket, with no
// second fetch.
func TestTokenFetchedBeforeLeaseLossIsStored(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	const ttl = 2 * time.Second
	fetch := newAnswerHold("/cgi-bin/token")
	proxy := testenv.NewProxy(t, srv.Addr().String())
	// nats.go keeps what is published while it reconnects and sends it
	// once it is back, so a write made during this cut would land by
	// itself. One lost on the wire (a partition that resets nothing, a
	// server that dies before it stores) would not; without the buffer,
	// neither does this one.
	testenv.Refresher(t, testenv.Connect(t, proxy.URL(), nats.ReconnectBufSize(-1)), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: time.Second, Instance: "a", HTTPClient: fetch.client(nil)})
	nc := testenv.Connect(t, srv.ClientURL())
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), appA)
	first := testenv.Next(t, ctx, entries) // a leads and stored the first token
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: time.Second, Instance: "b"})
	leases := leaseHolders(t, ctx, nc)

	// WeChat ends the token; a service sees it rejected and asks for a
	// new one. a's fetch reaches WeChat, which issues the token, and a is
	// cut off before it hears the answer.
	fake.Revoke(testenv.Record(t, first).Value)
	fetch.arm()
	askRefresh(t, nc, appA, first.Revision())
	fetch.await(t, ctx)
	issued := fake.Current(appA)
	proxy.Cut()
	fetch.release()
	awaitHolder(t, ctx, leases, "b")
	proxy.Heal()

	healed := testenv.Context(t, 10*time.Second)
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-entries:
		case <-healed.Done():
			t.Fatalf("10s after the network healed, the bucket still holds revision %d, a token WeChat ended; "+
				"the token a fetched was never stored", first.Revision())
		}
		if testenv.Record(t, e).Value == issued {
			break
		}
	}
	if ok, code := fake.Valid(issued); !ok {
		t.Errorf("WeChat rejects the stored token: errcode %d", code)
	}
	if n := fake.Issued(appA); n != 2 {
		t.Errorf("WeChat issued %d tokens, want 2: the first and the one a fetched, stored without a second fetch", n)
	}
}

// TestLeaderCutOffStartsNoFetch: the leader hears that the bucket's token is
// dead (WeChat's answer to its check was on the way) just after it was cut
// off from NATS. It must not fetch: it could not store the token, and the
// standby that takes over fetches its own, which ends the first. So
// WeChat's fetches equal the rotations the bucket shows.
func TestLeaderCutOffStartsNoFetch(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	srv := testenv.NATS(t)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	// The lease surely covers a fetch for ttl-margin-ttl/3 = 1.13s after
	// any renewal, far longer than the upstream timeout: only knowing that
	// the lease is in doubt can keep a from fetching.
	const ttl = 2 * time.Second
	var calls upstreamLog
	check := newAnswerHold("/cgi-bin/getcallbackip")
	proxy := testenv.NewProxy(t, srv.Addr().String())
	disconnected := make(chan struct{}, 1)
	ncA := testenv.Connect(t, proxy.URL(), nats.DisconnectErrHandler(func(*nats.Conn, error) {
		select {
		case disconnected <- struct{}{}:
		default:
		}
	}))
	testenv.Refresher(t, ncA, publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: 500 * time.Millisecond, Instance: "a", HTTPClient: check.client(calls.client("a").Transport)})
	nc := testenv.Connect(t, srv.ClientURL())
	bucket := testenv.Bucket(t, ctx, nc)
	entries := testenv.Entries(t, bucket, appA)
	first := testenv.Next(t, ctx, entries) // a leads and stored the first token
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{Apps: apps, UpstreamURL: url,
		LeaseTTL: ttl, UpstreamTimeout: 500 * time.Millisecond, Instance: "b", HTTPClient: calls.client("b")})
	leases := leaseHolders(t, ctx, nc)

	// WeChat ends the token; a service sees it rejected and asks for a new
	// one. a asks WeChat whether the token works, and is cut off before it
	// hears "no": the fetch falls due on a leader that knows it is cut off
	// from NATS.
	fake.Revoke(testenv.Record(t, first).Value)
	check.arm()
	askRefresh(t, nc, appA, first.Revision())
	check.await(t, ctx)
	proxy.Cut()
	cut := time.Now()
	select {
	case <-disconnected:
	case <-ctx.Done():
		t.Fatal("a never noticed it was cut off")
	}
	check.release()
	// Healed at the end, a stops as fast as a connected replica does.
	defer proxy.Heal()
	awaitHolder(t, ctx, leases, "b")
	// The service asks again, and b, now leading, rotates.
	if reply := refreshAnswered(t, ctx, nc, appA, first.Revision()); reply.Error != nil || !reply.Refreshed {
		t.Fatalf("b answered %+v, want a new token", reply)
	}

	e, err := bucket.Get(ctx, appA)
	if err != nil {
		t.Fatal(err)
	}
	rotations := 1 + testenv.CountUpTo(t, ctx, entries, e.Revision()) // the first, and each since
	for _, c := range calls.snapshot() {
		t.Logf("%s fetched at %s from the cut", c.replica, c.at.Sub(cut).Round(time.Millisecond))
	}
	if issued := fake.Issued(appA); issued != rotations {
		t.Errorf("WeChat issued %d tokens for the %d rotations the bucket shows: the leader cut off from NATS fetched one it could not store",
			issued, rotations)
	}
	if testenv.Record(t, e).Value != fake.Current(appA) {
		t.Error("the bucket does not hold WeChat's newest token")
	}
}

// TestRefreshRequestsAnsweredAfterPartitionHeals: the leader, connected to
// NATS through a relay, is cut off until it steps down and the standby,
// connected directly, takes over; then the network heals. Every refresh
// request sent from 1 s after the heal on is answered, those naming no
// revision and those naming an older one alike, and the server holds one
// subscription on the refresh subject, the new leader's: the endpoint of
// the term that ended while cut off is gone, and the replica that lost the
// lead stands by.
//
// Two kinds of partition: one that resets the connections, after which
// the replica cut off reconnects, and nats.go subscribes its ended term's
// endpoint again until it stops (stopped while reconnecting, it was left
// an orphan on the server); and one that resets nothing, where what was
// sent meanwhile, its endpoint's unsubscription included, arrives at the
// heal.
func TestRefreshRequestsAnsweredAfterPartitionHeals(t *testing.T) {
	for _, partition := range []struct {
		name  string
		cut   func(*testenv.Proxy)
		reset bool
	}{
		{"connections reset", (*testenv.Proxy).Cut, true},
		{"silent", (*testenv.Proxy).Stall, false},
	} {
		t.Run(partition.name, func(t *testing.T) {
			ctx := testenv.Context(t, 30*time.Second)
			h := startPartitionedPair(t, ctx)
			partition.cut(h.relay)
			if err := h.logs.waitFor(ctx, "leadership lost"); err != nil {
				t.Fatalf("the leader never stepped down while cut off: %v", err)
			}
			if err := h.logs.waitForCount(ctx, "became leader", 2); err != nil {
				t.Fatalf("the standby never took over: %v", err)
			}
			h.relay.Heal()
			healed := time.Now()
			if partition.reset {
				select {
				case <-h.reconnected:
					t.Logf("the replica cut off reconnected %s after the heal", time.Since(healed).Round(time.Millisecond))
				case <-ctx.Done():
					t.Fatal("the replica cut off never reconnected")
				}
			}
			// The contract's window: from 1 s after the heal on.
			select {
			case <-time.After(time.Until(healed.Add(time.Second))):
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			}
			// With a second member in the queue group, each request goes
			// to it with even odds: 50 all answered by chance is 2^-50.
			older := kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: revision(h.older)})
			bodies := make([][]byte, 50)
			for i := 0; i < len(bodies); i += 2 {
				bodies[i] = older
			}
			sent := time.Since(healed)
			if failed := requestBurst(ctx, h.nc, bodies); len(failed) > 0 {
				t.Errorf("%d of %d refresh requests sent %s after the heal got no answer, the first: %v",
					len(failed), len(bodies), sent.Round(time.Millisecond), failed[0])
			}
			subs := refreshSubscriptions(t, h.srv)
			if len(subs) != 1 || !strings.HasPrefix(subs[0], "standby ") {
				t.Errorf("the server holds %d subscriptions on %s %v; want one, the standby's", len(subs), kv.Subjects{}.Refresh(">"), subs)
			}
			if h.cutOff.Leading() || !h.standby.Leading() {
				t.Errorf("leading: cut-off %v, standby %v; want the standby alone", h.cutOff.Leading(), h.standby.Leading())
			}
		})
	}
}

// partitionedPair is two replicas of one refresher: cut-off, the leader,
// connected to NATS through relay, and standby, connected directly, as is
// the test's own connection nc. The bucket holds a second token, so that
// requests can name an older revision.
type partitionedPair struct {
	srv             *server.Server
	relay           *testenv.Proxy
	nc              *nats.Conn
	cutOff, standby *testenv.Running
	logs            *notifyingBuffer
	reconnected     chan struct{} // cut-off's connection is back
	older           uint64        // the first token's revision
}

func startPartitionedPair(t *testing.T, ctx context.Context) *partitionedPair {
	t.Helper()
	h := &partitionedPair{srv: testenv.NATS(t), logs: newNotifyingBuffer(), reconnected: make(chan struct{}, 1)}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replicas' logs:\n%s", h.logs.String())
		}
	})
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	replica := func(name string, nc *nats.Conn) *testenv.Running {
		return testenv.Refresher(t, nc, publisher.Config{Apps: apps, UpstreamURL: url,
			LeaseTTL: restartLeaseTTL, UpstreamTimeout: restartLeaseTTL / 4,
			Instance: name, Logger: textLogger(h.logs).With("replica", name)})
	}
	h.relay = testenv.NewProxy(t, h.srv.Addr().String())
	h.cutOff = replica("cut-off", testenv.Connect(t, h.relay.URL(), nats.Name("cut-off"),
		nats.ReconnectHandler(func(*nats.Conn) {
			select {
			case h.reconnected <- struct{}{}:
			default:
			}
		})))
	h.nc = testenv.Connect(t, h.srv.ClientURL(), nats.Name("test"))
	awaitEndpoint(t, ctx, h.nc, appA) // cut-off leads
	first, err := testenv.Bucket(t, ctx, h.nc).Get(ctx, appA)
	if err != nil {
		t.Fatal(err)
	}
	h.older = first.Revision()
	fake.Revoke(testenv.Record(t, first).Value)
	if reply := refreshAnswered(t, ctx, h.nc, appA, h.older); reply.Error != nil || !reply.Refreshed {
		t.Fatalf("a forced refresh was answered %+v, want a new token", reply)
	}
	h.standby = replica("standby", testenv.Connect(t, h.srv.ClientURL(), nats.Name("standby")))
	if err := h.logs.waitFor(ctx, "standing by"); err != nil {
		t.Fatalf("the second replica never stood by: %v", err)
	}
	return h
}
