package test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// restartLeaseTTL is the lease TTL of the restart tests: short, so that a
// leader steps down during an outage of a second or two.
const restartLeaseTTL = 2 * time.Second

// restartRig is a NATS server on a fixed port and store, refresher replicas
// r0, r1, ... connected to it over TCP, and the test's own connection. The
// replicas log into one buffer, each line naming its replica.
type restartRig struct {
	opts     *server.Options
	srv      *server.Server
	stop     func()
	nc       *nats.Conn
	logs     *notifyingBuffer
	replicas []*testenv.Running
}

func startRestartRig(t *testing.T, replicas int) *restartRig {
	t.Helper()
	opts, err := embedded.Options(fmt.Sprintf("127.0.0.1:%d", freePort(t)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rig := &restartRig{opts: opts, logs: newNotifyingBuffer()}
	rig.srv, rig.stop = startServer(t, opts)
	url := fmt.Sprintf("nats://%s:%d", opts.Host, opts.Port)
	fake, wechatURL := testenv.WeChat(t, fakewechat.Config{})
	apps := testenv.Apps(fake, appA)
	for i := range replicas {
		name := fmt.Sprintf("r%d", i)
		rig.replicas = append(rig.replicas, testenv.Refresher(t, testenv.Connect(t, url, nats.Name(name)), publisher.Config{
			Apps: apps, UpstreamURL: wechatURL, LeaseTTL: restartLeaseTTL, UpstreamTimeout: restartLeaseTTL / 4,
			Instance: name, Logger: textLogger(rig.logs).With("replica", name)}))
	}
	rig.nc = testenv.Connect(t, url, nats.Name("test"))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replicas' logs:\n%s", rig.logs.String())
		}
	})
	return rig
}

// outage stops NATS until the leader steps down, its lease not renewed in
// time, and for longer after it, then starts NATS again on the same port
// and store. It returns when the server accepts clients again.
func (rig *restartRig) outage(t *testing.T, ctx context.Context, longer time.Duration) (restarted time.Time) {
	t.Helper()
	lost := strings.Count(rig.logs.String(), "leadership lost")
	rig.stop()
	if err := rig.logs.waitForCount(ctx, "leadership lost", lost+1); err != nil {
		t.Fatalf("the leader never stepped down while NATS was away: %v", err)
	}
	// The fault itself: NATS stays away for longer, if asked.
	select {
	case <-time.After(longer):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	rig.srv, rig.stop = startServer(t, rig.opts)
	// Replicas stop before this server does, as they would with a live
	// one: a stop that releases the lease must not wait out a timeout.
	t.Cleanup(func() { rig.stopReplicas(t) })
	return time.Now()
}

func (rig *restartRig) stopReplicas(t *testing.T) {
	for _, r := range rig.replicas {
		if err := r.Stop(); err != nil {
			t.Errorf("refresher: %v", err)
		}
	}
}

// leaders counts the replicas that lead.
func (rig *restartRig) leaders() int {
	n := 0
	for _, r := range rig.replicas {
		if r.Leading() {
			n++
		}
	}
	return n
}

// refreshSubscriptions lists srv's subscriptions on the refresh endpoint's
// subject, each as "<connection name> sid <sid>".
func refreshSubscriptions(t *testing.T, srv *server.Server) []string {
	t.Helper()
	connz, err := srv.Connz(&server.ConnzOptions{Subscriptions: true, SubscriptionsDetail: true})
	if err != nil {
		t.Fatal(err)
	}
	var subs []string
	for _, c := range connz.Conns {
		for _, sub := range c.SubsDetail {
			if sub.Subject == (kv.Subjects{}).Refresh(">") {
				subs = append(subs, fmt.Sprintf("%s sid %s", c.Name, sub.Sid))
			}
		}
	}
	return subs
}

// TestRefreshRequestsAnsweredAfterNATSRestart restarts NATS (same port, same
// store) for long enough that the leader steps down, under one refresher
// and under two replicas. Every refresh request sent from 1 s after the
// restart on is answered, and the server holds exactly one subscription on
// the refresh subject: the leader's. The endpoint of the term that ended
// during the outage is gone. (micro stops an endpoint by draining it; a
// drain begun while nats.go reconnects was resubscribed on the new server
// and then dropped by the client alone: the server kept a member of the
// queue group that nobody answered for, and sent it its share of requests.)
func TestRefreshRequestsAnsweredAfterNATSRestart(t *testing.T) {
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			ctx := testenv.Context(t, 60*time.Second)
			rig := startRestartRig(t, replicas)
			awaitEndpoint(t, ctx, rig.nc, appA)
			restarted := rig.outage(t, ctx, 0)
			// The contract's window: from 1 s after the restart on.
			select {
			case <-time.After(time.Until(restarted.Add(time.Second))):
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			}
			// With a second member in the queue group, each request goes
			// to it with even odds: 50 all answered by chance is 2^-50.
			sent := time.Since(restarted)
			if failed := requestBurst(ctx, rig.nc, make([][]byte, 50)); len(failed) > 0 {
				t.Errorf("%d of 50 refresh requests sent %s after the restart got no answer, the first: %v",
					len(failed), sent.Round(time.Millisecond), failed[0])
			}
			if subs := refreshSubscriptions(t, rig.srv); len(subs) != 1 || rig.leaders() != 1 {
				t.Errorf("the server holds %d subscriptions on %s %v, and %d replicas lead; want one of each",
					len(subs), (kv.Subjects{}).Refresh(">"), subs, rig.leaders())
			}
		})
	}
}

// requestBurst sends a refresh request for appA with each body at once
// (a nil body names no stale revision), each given 2 s, and returns why
// those that got no valid answer failed.
func requestBurst(ctx context.Context, nc *nats.Conn, bodies [][]byte) []error {
	var (
		mu     sync.Mutex
		failed []error
		wg     sync.WaitGroup
	)
	for _, body := range bodies {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			err := answered(rctx, nc, body)
			if err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// answered sends one refresh request for appA with body and checks that
// the reply names a token, without error.
func answered(ctx context.Context, nc *nats.Conn, body []byte) error {
	msg, err := nc.RequestWithContext(ctx, (kv.Subjects{}).Refresh(appA), body)
	if err != nil {
		return err
	}
	var reply kv.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return fmt.Errorf("reply %q: %w", msg.Data, err)
	}
	if reply.Error != nil || reply.Revision == 0 {
		return fmt.Errorf("reply %q", msg.Data)
	}
	return nil
}

// TestLeaderBackRightAfterNATSRestart restarts NATS under two replicas,
// twice: once as soon as the leader has stepped down for want of a renewal,
// once a lease TTL after that, when its lease has lapsed. Each time it
// measures the gap with no leader, from the restart to the next "became
// leader", and checks that the new leader keeps its lease.
//
// The bound is half the lease TTL. Nobody holds a live lease when NATS
// comes back: the only leader stepped down during the outage. So no part
// of a TTL may be waited out; what is left is nats.go's reconnect (50 ms
// plus up to 100 ms of jitter here) and a few JetStream requests. What the
// key may hold then is the old leader's last renewal, written by nats.go
// on reconnect although the leader had given up on it: that replica must
// take its own lease over at once, not stand by behind itself until it
// lapses (a TTL and the server's 250 ms expiry check later, 2.25 s here).
// After the longer outage, a lease write sent while NATS was away would
// likewise be written on reconnect, and a lease taken so, counted from
// before the outage, is lost again at once.
func TestLeaderBackRightAfterNATSRestart(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	rig := startRestartRig(t, 2)
	awaitEndpoint(t, ctx, rig.nc, appA)
	leases, stopFollowing := followLease(t, ctx, rig.nc)
	defer stopFollowing() // while the last server runs: stopping a watch asks the server
	for i, longer := range []time.Duration{0, restartLeaseTTL} {
		leases.mark()
		led := strings.Count(rig.logs.String(), "became leader")
		lost := strings.Count(rig.logs.String(), "leadership lost")
		restarted := rig.outage(t, ctx, longer)
		if err := rig.logs.waitForCount(ctx, "became leader", led+1); err != nil {
			t.Fatalf("restart %d: no replica leads: %v", i+1, err)
		}
		gap := time.Since(restarted)
		t.Logf("restart %d: a replica leads %s after NATS is back (lease TTL %s)", i+1, gap.Round(time.Millisecond), restartLeaseTTL)
		if gap > restartLeaseTTL/2 {
			t.Errorf("restart %d: nobody led for %s after NATS was back, more than half the lease TTL %s",
				i+1, gap.Round(time.Millisecond), restartLeaseTTL)
		}
		// The new leader keeps its lease: two renewals of one term (due
		// every third of the TTL), with no replica stepping down meanwhile.
		if err := leases.awaitRenewals(testenv.Context(t, 3*restartLeaseTTL), 2); err != nil {
			t.Errorf("restart %d: no new term renewed its lease twice within %s", i+1, 3*restartLeaseTTL)
		}
		if n := strings.Count(rig.logs.String(), "leadership lost"); n != lost+1 {
			t.Errorf("restart %d: %d replicas stepped down after NATS was back", i+1, n-lost-1)
		}
		if rig.leaders() != 1 {
			t.Errorf("restart %d: %d replicas lead", i+1, rig.leaders())
		}
	}
	for _, line := range rig.logs.linesWith("standing by") {
		replica, leader := logField(line, "replica"), logField(line, "leader")
		switch {
		case replica == "" || leader == "":
			t.Errorf("a standing-by line without its replica or leader: %s", line)
		case replica == leader:
			t.Errorf("a replica stood by behind itself: %s", line)
		}
	}
}

// logField returns the value of key in a line of text log, or "".
func logField(line, key string) string {
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	return m[1]
}

// leaseWrites follows the lease key: every write, as the holder it names.
// It watches again as soon as the connection is back, so that it sees the
// writes right after a restart.
type leaseWrites struct {
	ch   chan kv.LeaseHolder
	seen map[string]bool // terms received
	old  map[string]bool // terms received before the last call to mark
}

// followLease starts following the lease key and returns once it has read
// the key; stop stops following.
func followLease(t *testing.T, ctx context.Context, nc *nats.Conn) (w *leaseWrites, stop func()) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.KeyValue(ctx, kv.LeaseBucket(kv.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	w = &leaseWrites{ch: make(chan kv.LeaseHolder, 1024), seen: map[string]bool{}}
	synced := make(chan struct{})
	var once sync.Once
	follow, stopFollowing := context.WithCancel(context.Background())
	followed := make(chan struct{})
	stop = func() {
		stopFollowing()
		<-followed
	}
	f := &kvwatch.Follower{Bucket: b, Key: kv.LeaseKey, Conn: nc,
		OnSynced: func() { once.Do(func() { close(synced) }) },
		OnEntry: func(e jetstream.KeyValueEntry) {
			if h, err := kv.DecodeLeaseHolder(e.Value()); e.Operation() == jetstream.KeyValuePut && err == nil {
				select {
				case w.ch <- h:
				default: // nobody reads: drop rather than block the follower
				}
			}
		}}
	go func() {
		defer close(followed)
		f.Run(follow)
	}()
	select {
	case <-synced:
	case <-ctx.Done():
		stop()
		t.Fatal("the lease key was never read")
	}
	return w, stop
}

// mark makes every term received so far old: a write of an old term that
// arrives later (late, or written again by nats.go on reconnect) is no
// new leader's.
func (w *leaseWrites) mark() {
	for {
		select {
		case h := <-w.ch:
			w.seen[h.Term] = true
		default:
			w.old = maps.Clone(w.seen)
			return
		}
	}
}

// awaitRenewals waits until a term that is not old has written the lease
// n+1 times in a row: taken, then renewed n times.
func (w *leaseWrites) awaitRenewals(ctx context.Context, n int) error {
	var term string
	renewals := 0
	for {
		select {
		case h := <-w.ch:
			w.seen[h.Term] = true
			switch {
			case w.old[h.Term]:
			case h.Term == term:
				if renewals++; renewals == n {
					return nil
				}
			default:
				term, renewals = h.Term, 0
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
