package test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// setApp is the appid of the i-th app of a Set's tests.
func setApp(i int) string { return fmt.Sprintf("wxse7%013d", i) }

// setSystem is a NATS server, a fake WeChat and a refresher keeping n apps,
// each with its jsapi_ticket, all stored.
type setSystem struct {
	srv       *server.Server
	nc        *nats.Conn // the test's own
	fake      *fakewechat.Server
	wechatURL string
	refresher *testenv.Running
	apps      []publisher.App
	bucket    jetstream.KeyValue
}

func startSetSystem(t *testing.T, ctx context.Context, n int, cfg publisher.Config) *setSystem {
	t.Helper()
	sys := &setSystem{srv: testenv.NATS(t)}
	sys.nc = testenv.Connect(t, sys.srv.ClientURL())
	sys.fake, sys.wechatURL = testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	var ids []string
	for i := range n {
		ids = append(ids, setApp(i))
	}
	sys.apps = withJSAPITickets(testenv.Apps(sys.fake, ids...))
	cfg.Apps, cfg.UpstreamURL = sys.apps, sys.wechatURL
	if cfg.MinForceInterval == 0 {
		cfg.MinForceInterval = time.Nanosecond
	}
	sys.refresher = testenv.Refresher(t, sys.nc, cfg)
	sys.bucket = testenv.Bucket(t, ctx, sys.nc)
	sys.awaitStored(t, ctx, sys.keys()...)
	return sys
}

func withJSAPITickets(apps []publisher.App) []publisher.App {
	for i := range apps {
		apps[i].Tickets = []publisher.Ticket{publisher.TicketJSAPI}
	}
	return apps
}

// keys are every key the refresher keeps: each app's token and ticket.
func (sys *setSystem) keys() []string {
	var keys []string
	for _, a := range sys.apps {
		keys = append(keys, a.AppID, kv.Key(a.AppID, kv.KindJSAPITicket))
	}
	return keys
}

// awaitStored waits until the bucket holds a value of each key.
func (sys *setSystem) awaitStored(t *testing.T, ctx context.Context, keys ...string) {
	t.Helper()
	for _, key := range keys {
		testenv.Next(t, ctx, testenv.Entries(t, sys.bucket, key))
	}
}

// stored returns the value and revision the bucket holds under key.
func (sys *setSystem) stored(t *testing.T, ctx context.Context, key string) subscriber.Token {
	t.Helper()
	e, err := sys.bucket.Get(ctx, key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	c, err := kv.DecodeCredential(key, e.Value())
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return subscriber.Token{Value: c.Value, Revision: e.Revision(), ExpiresAt: c.ExpiresAt}
}

// rotate has the refresher replace appid's token, as after WeChat
// rejected it, and returns the new revision.
func (sys *setSystem) rotate(t *testing.T, ctx context.Context, appid string) uint64 {
	t.Helper()
	rev := sys.stored(t, ctx, appid).Revision
	sys.fake.Issue(appid)
	reply := refreshRequest(t, ctx, sys.nc, appid, &rev)
	if reply.Error != nil || reply.Revision <= rev {
		t.Fatalf("rotating %s: %+v", appid, reply)
	}
	return reply.Revision
}

// refreshRequest sends a refresh request for key naming stale.
func refreshRequest(t *testing.T, ctx context.Context, nc *nats.Conn, key string, stale *uint64) kv.RefreshReply {
	t.Helper()
	msg, err := nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(key), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: stale}))
	if err != nil {
		t.Fatalf("refresh %s: %v", key, err)
	}
	var reply kv.RefreshReply
	if err := reply.UnmarshalJSON(msg.Data); err != nil {
		t.Fatalf("refresh %s: %q: %v", key, msg.Data, err)
	}
	return reply
}

// newSet starts a Set on nc, closed at cleanup.
func newSet(t *testing.T, ctx context.Context, nc *nats.Conn, opts ...subscriber.Option) *subscriber.Set {
	t.Helper()
	set, err := subscriber.NewSet(ctx, nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close() })
	return set
}

// awaitSetNewer waits until set holds a value of key newer than revision.
func awaitSetNewer(t *testing.T, ctx context.Context, set *subscriber.Set, key string, revision uint64) subscriber.Token {
	t.Helper()
	for {
		if tok := set.Token(key); tok.Revision > revision {
			return tok
		}
		select {
		case <-set.Updated():
		case <-ctx.Done():
			t.Fatalf("no value of %s after revision %d", key, revision)
		}
	}
}

// awaitSetErr waits until set.Current(key) returns an error that is target.
func awaitSetErr(t *testing.T, ctx context.Context, set *subscriber.Set, key string, target error) error {
	t.Helper()
	for {
		if _, err := set.Current(key); errors.Is(err, target) {
			return err
		}
		select {
		case <-set.Updated():
		case <-ctx.Done():
			_, err := set.Current(key)
			t.Fatalf("%s: %v, want %v", key, err, target)
		}
	}
}

// streamConsumers counts the consumers of the token bucket's stream.
func streamConsumers(t *testing.T, ctx context.Context, nc *nats.Conn) int {
	t.Helper()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "KV_"+kv.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// awaitConsumers waits until the token bucket's stream has n consumers:
// a read's consumer is deleted just after the read.
func awaitConsumers(t *testing.T, ctx context.Context, nc *nats.Conn, n int) {
	t.Helper()
	for streamConsumers(t, ctx, nc) != n {
		select {
		case <-ctx.Done():
			t.Fatalf("%d consumers on the token stream, want %d", streamConsumers(t, ctx, nc), n)
		case <-time.After(20 * time.Millisecond): // polling the server's count
		}
	}
}

// subscriptionsOf returns the subjects nc is subscribed to, as the server
// sees them.
func subscriptionsOf(t *testing.T, srv *server.Server, nc *nats.Conn) []string {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	connz, err := srv.Connz(&server.ConnzOptions{CID: cid, Subscriptions: true})
	if err != nil || len(connz.Conns) != 1 {
		t.Fatalf("connz of %d: %v", cid, err)
	}
	return connz.Conns[0].Subs
}

// TestSetFollowsEveryKeyOnOneSubscription: a Set holds every key of the
// bucket (tokens and tickets) once NewSet returns, on one subscription to
// the Value subjects and no consumer left after its read; it follows
// rotations, and a key the refresher starts keeping later, without a
// restart.
func TestSetFollowsEveryKeyOnOneSubscription(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSetSystem(t, ctx, 20, publisher.Config{})
	consumers := streamConsumers(t, ctx, sys.nc)
	setConn := testenv.Connect(t, sys.srv.ClientURL())
	set := newSet(t, ctx, setConn)

	for _, key := range sys.keys() {
		if got, want := set.Token(key), sys.stored(t, ctx, key); got != want {
			t.Errorf("%s: the set holds %+v, the bucket %+v", key, got, want)
		}
	}
	if got, want := set.Keys(), slices.Sorted(slices.Values(sys.keys())); !slices.Equal(got, want) {
		t.Errorf("Keys() = %v, want %v", got, want)
	}
	var values []string
	for _, subject := range subscriptionsOf(t, sys.srv, setConn) {
		if !strings.HasPrefix(subject, "_INBOX.") { // nats.go's one inbox for JetStream's answers
			values = append(values, subject)
		}
	}
	if !slices.Equal(values, []string{"wechat.token.value.>"}) {
		t.Errorf("the set's connection subscribes to %v, want the Value subjects alone", values)
	}
	awaitConsumers(t, ctx, sys.nc, consumers)

	for _, appid := range []string{setApp(3), setApp(17)} {
		rev := sys.rotate(t, ctx, appid)
		if tok := awaitSetNewer(t, ctx, set, appid, rev-1); tok.Value != sys.fake.Current(appid) || tok.Revision != rev {
			t.Errorf("%s after a rotation: %+v, want revision %d with WeChat's token", appid, tok, rev)
		}
	}

	added := setApp(20)
	if err := sys.refresher.SetApps(append(sys.apps, withJSAPITickets(testenv.Apps(sys.fake, added))...)); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{added, kv.Key(added, kv.KindJSAPITicket)} {
		if tok := awaitSetNewer(t, ctx, set, key, 0); tok.Value != sys.stored(t, ctx, key).Value {
			t.Errorf("%s, added later: %+v", key, tok)
		}
	}
	if tok, err := set.Current(added); err != nil || tok.Value != sys.fake.Current(added) {
		t.Errorf("Current(%s) = %+v, %v", added, tok, err)
	}
}

// TestSetWithKeysFollowsThoseAlone: WithKeys makes a Set hold only the
// keys named; another key is unknown to it, and a key named that the bucket
// does not have yet is held once the refresher stores it.
func TestSetWithKeysFollowsThoseAlone(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSetSystem(t, ctx, 3, publisher.Config{})
	ticket, later := kv.Key(setApp(1), kv.KindJSAPITicket), setApp(9)
	set := newSet(t, ctx, testenv.Connect(t, sys.srv.ClientURL()), subscriber.WithKeys(setApp(0), ticket, later))

	if got := set.Keys(); !slices.Equal(got, []string{setApp(0), ticket}) {
		t.Errorf("Keys() = %v, want the two named keys the bucket has", got)
	}
	if tok, err := set.Current(ticket); err != nil || tok.Value != sys.stored(t, ctx, ticket).Value {
		t.Errorf("Current(%s) = %+v, %v", ticket, tok, err)
	}
	if _, err := set.Current(setApp(2)); !errors.Is(err, subscriber.ErrUnknownKey) || !strings.Contains(err.Error(), "not among the keys") {
		t.Errorf("Current of a key not named: %v, want ErrUnknownKey saying it is not among the keys", err)
	}
	if _, err := set.Current(later); !errors.Is(err, subscriber.ErrUnknownKey) || !strings.Contains(err.Error(), "has no value") {
		t.Errorf("Current of a named key not stored yet: %v, want ErrUnknownKey saying the bucket has none", err)
	}
	if err := sys.refresher.SetApps(append(sys.apps, testenv.Apps(sys.fake, later)...)); err != nil {
		t.Fatal(err)
	}
	if tok := awaitSetNewer(t, ctx, set, later, 0); tok.Value != sys.fake.Current(later) {
		t.Errorf("%s once stored: %+v", later, tok)
	}
	sys.rotate(t, ctx, setApp(2))
	if tok := set.Token(setApp(2)); tok != (subscriber.Token{}) {
		t.Errorf("a key not named is held: %+v", tok)
	}
}

// TestSetReadsWhatItMissedWhileAway: values stored while a Set's
// connection is cut (a rotation, a new key, a key removed for good) are
// read when it reconnects, and Close then returns at once.
func TestSetReadsWhatItMissedWhileAway(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSetSystem(t, ctx, 3, publisher.Config{})
	proxy := testenv.NewProxy(t, strings.TrimPrefix(sys.srv.ClientURL(), "nats://"))
	reconnected := make(chan struct{}, 8)
	// A key the refresher does not keep, so that it does not write it
	// again once removed, as it would an app's.
	removed := setApp(8)
	data, _ := kv.EncodeCredential(kv.NewCredential(removed, "put-by-hand", time.Hour, time.Now()))
	removedFrom, err := sys.bucket.Put(ctx, removed, data)
	if err != nil {
		t.Fatal(err)
	}
	set := newSet(t, ctx, testenv.Connect(t, proxy.URL(), nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })))
	if tok := set.Token(removed); tok.Revision != removedFrom {
		t.Fatalf("%s: %+v, want revision %d", removed, tok, removedFrom)
	}

	proxy.Cut()
	rotated := sys.rotate(t, ctx, setApp(0))
	added := setApp(5)
	if err := sys.refresher.SetApps(append(sys.apps, testenv.Apps(sys.fake, added)...)); err != nil {
		t.Fatal(err)
	}
	sys.awaitStored(t, ctx, added)
	js, _ := jetstream.New(sys.nc)
	removedAt, err := kv.Remove(ctx, js, kv.DefaultBucket, removed, removedFrom, kv.RemovedUnauthorized)
	if err != nil {
		t.Fatal(err)
	}
	if tok := set.Token(setApp(0)); tok.Revision >= rotated {
		t.Fatalf("the set holds revision %d while cut off", tok.Revision)
	}
	proxy.Heal()
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("the set's connection did not come back")
	}

	if tok := awaitSetNewer(t, ctx, set, setApp(0), rotated-1); tok.Value != sys.fake.Current(setApp(0)) {
		t.Errorf("the rotation made while away: %+v", tok)
	}
	if tok := awaitSetNewer(t, ctx, set, added, 0); tok.Value != sys.fake.Current(added) {
		t.Errorf("the key added while away: %+v", tok)
	}
	err = awaitSetErr(t, ctx, set, removed, subscriber.ErrRemoved)
	if !strings.Contains(err.Error(), fmt.Sprintf("%s was removed at revision %d", removed, removedAt)) {
		t.Errorf("the key removed while away: %v", err)
	}
	// The cut may have lost the deletion of a read's consumer, which
	// nats.go waits 5 s to give up on: Close does not wait for it.
	returns(t, "Close", time.Second, func() { set.Close() })
}

// TestSetKeepsTheLastGoodValue: a value that does not decode is reported
// (Err, OnSetError with its key) and the last good one stays; a good
// value overcomes it.
func TestSetKeepsTheLastGoodValue(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{}) // says values are published
	if err != nil {
		t.Fatal(err)
	}
	first := putRecord(t, ctx, b, "first", time.Hour)
	problems := make(chan string, 8)
	set := newSet(t, ctx, nc, subscriber.OnSetError(func(_ *subscriber.Set, key string, err error) {
		problems <- key + ": " + err.Error()
	}))

	garbage, err := b.Put(ctx, appA, []byte("<html>502</html>"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, garbage, []byte("<html>502</html>"))); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-problems:
		if !strings.HasPrefix(p, appA+": ") || !strings.Contains(p, fmt.Sprintf("revision %d", garbage)) {
			t.Errorf("OnSetError got %q", p)
		}
	case <-ctx.Done():
		t.Fatal("OnSetError not called")
	}
	if tok, err := set.Current(appA); err != nil || tok.Value != "first" || tok.Revision != first {
		t.Errorf("after garbage: %+v, %v; want the last good value", tok, err)
	}
	if set.Err() == nil {
		t.Error("Err() is nil after garbage")
	}
	rev := putRecord(t, ctx, b, "second", time.Hour)
	if err := nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, rev, mustRecord(t, "second"))); err != nil {
		t.Fatal(err)
	}
	awaitSetNewer(t, ctx, set, appA, garbage)
	if err := set.Err(); err != nil {
		t.Errorf("Err() after a good value: %v", err)
	}
}

// mustRecord encodes a record of appA's.
func mustRecord(t *testing.T, token string) []byte {
	t.Helper()
	data, err := kv.EncodeCredential(kv.NewCredential(appA, token, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestSetSaysARemovedKeyRemoved: a key the refresher removes for good
// (its message on the Value subject) is said removed by Current, Refresh,
// Transport and OnSetError, and Updated fires; a value stored later ends
// it. With no values published, the Set's KV watch reads the delete
// marker's header, and tells a removal from someone's delete.
func TestSetSaysARemovedKeyRemoved(t *testing.T) {
	for _, published := range []bool{true, false} {
		t.Run(map[bool]string{true: "published values", false: "KV watch"}[published], func(t *testing.T) {
			ctx := testenv.Context(t, 30*time.Second)
			nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
			js, _ := jetstream.New(nc)
			var b jetstream.KeyValue
			var err error
			if published {
				b, err = bucket.Open(ctx, js, bucket.Config{History: 4})
			} else {
				b, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, History: 4})
			}
			if err != nil {
				t.Fatal(err)
			}
			put := func(token string) uint64 {
				rev := putRecord(t, ctx, b, token, time.Hour)
				if published {
					if err := nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appA, rev, mustRecord(t, token))); err != nil {
						t.Fatal(err)
					}
				}
				return rev
			}
			rev := put("first")
			logs := newNotifyingBuffer()
			problems := make(chan error, 8)
			set := newSet(t, ctx, nc, subscriber.WithLogger(textLogger(logs)),
				subscriber.OnSetError(func(_ *subscriber.Set, key string, err error) { problems <- err }))
			if !published {
				if err := b.Delete(ctx, appA); err != nil {
					t.Fatal(err)
				}
				if err := logs.waitFor(ctx, "token key was deleted; keeping the last token"); err != nil {
					t.Fatal(err)
				}
				if tok, err := set.Current(appA); err != nil || tok.Value != "first" {
					t.Errorf("after someone's delete: %q, %v; want the last token", tok.Value, err)
				}
				rev = put("second")
				awaitSetNewer(t, ctx, set, appA, rev-1)
			}

			removedAt, err := kv.Remove(ctx, js, kv.DefaultBucket, appA, rev, kv.RemovedUnauthorized)
			if err != nil {
				t.Fatal(err)
			}
			if published {
				if err := nc.PublishMsg(kv.RemovalMsg(kv.Subjects{}, appA, removedAt, kv.RemovedUnauthorized)); err != nil {
					t.Fatal(err)
				}
			}
			err = awaitSetErr(t, ctx, set, appA, subscriber.ErrRemoved)
			if !strings.Contains(err.Error(), fmt.Sprintf("%s was removed at revision %d", appA, removedAt)) {
				t.Errorf("Current: %v", err)
			}
			select {
			case err := <-problems:
				if !errors.Is(err, subscriber.ErrRemoved) {
					t.Errorf("OnSetError got %v, want the removal", err)
				}
			case <-ctx.Done():
				t.Fatal("OnSetError was not told of the removal")
			}
			if _, err := set.Refresh(ctx, appA, rev); !errors.Is(err, subscriber.ErrRemoved) {
				t.Errorf("Refresh of a removed key: %v", err)
			}
			client := &http.Client{Transport: set.Transport(appA, nil)}
			if _, err := client.Get("http://127.0.0.1:1/cgi-bin/getcallbackip"); !errors.Is(err, subscriber.ErrRemoved) {
				t.Errorf("Transport of a removed key: %v", err)
			}

			awaitSetNewer(t, ctx, set, appA, put("third")-1)
			if tok, err := set.Current(appA); err != nil || tok.Value != "third" {
				t.Errorf("a value after the removal: %q, %v; want it served", tok.Value, err)
			}
		})
	}
}

// TestSetRefreshAndTransport: a Set's key is refreshed as a Subscriber's
// token is: Refresh naming the rejected revision returns WeChat's new
// token, Transport retries a call WeChat rejected, and a refresh the
// refresher rate-limits comes back as a *RefreshError saying when to ask
// again. A key the Set holds nothing of is refused with ErrUnknownKey.
func TestSetRefreshAndTransport(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSetSystem(t, ctx, 2, publisher.Config{MinForceInterval: time.Hour})
	set := newSet(t, ctx, testenv.Connect(t, sys.srv.ClientURL()))
	appid := setApp(0)

	sys.fake.Issue(appid) // WeChat rejects the token held
	held := set.Token(appid)
	fresh, err := set.Refresh(ctx, appid, held.Revision)
	if err != nil || fresh.Revision <= held.Revision || fresh.Value != sys.fake.Current(appid) {
		t.Fatalf("Refresh: %+v, %v; want WeChat's new token", fresh, err)
	}
	if set.Token(appid) != fresh {
		t.Errorf("Token after Refresh: %+v, want %+v", set.Token(appid), fresh)
	}

	sys.fake.Issue(appid) // rejected again, within the refresher's hour
	_, err = set.Refresh(ctx, appid, fresh.Revision)
	var refused *subscriber.RefreshError
	if !errors.Is(err, subscriber.ErrRateLimited) || !errors.As(err, &refused) || refused.RetryAfter <= 0 || refused.RetryAfter > time.Hour {
		t.Errorf("a refresh within --min-force-interval: %v, want ErrRateLimited with a RetryAfter", err)
	}

	other := setApp(1)
	sys.fake.Issue(other)
	client := &http.Client{Transport: set.Transport(other, nil)}
	if code := callbackIPErrcode(t, ctx, client, sys.wechatURL); code != 0 {
		t.Errorf("a call through Transport after a rejection: errcode %d, want 0 (refreshed and retried)", code)
	}
	if set.Token(other).Value != sys.fake.Current(other) {
		t.Error("the Set does not hold the token Transport's refresh brought")
	}

	if _, err := set.Refresh(ctx, "wx0000000000000bad", 1); !errors.Is(err, subscriber.ErrUnknownKey) {
		t.Errorf("Refresh of a key not held: %v, want ErrUnknownKey", err)
	}
	client = &http.Client{Transport: set.Transport("wx0000000000000bad", nil)}
	if _, err := client.Get(sys.wechatURL + "/cgi-bin/getcallbackip"); !errors.Is(err, subscriber.ErrUnknownKey) {
		t.Errorf("Transport of a key not held: %v, want ErrUnknownKey", err)
	}
}

// callbackIPErrcode calls getcallbackip through client and returns the
// answer's errcode.
func callbackIPErrcode(t *testing.T, ctx context.Context, client *http.Client, base string) int {
	t.Helper()
	a := callWith(t, ctx, client, http.MethodGet, base+"/cgi-bin/getcallbackip", nil)
	return a.errcode(t)
}

// TestSetWatchesWhenValuesAreForbidden: with a nats.conf from before the
// published values (no subscribe permission on them), a Set notices the
// refusal, watches the bucket instead, and follows rotations.
func TestSetWatchesWhenValuesAreForbidden(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := rolesServerEdited(t, func(conf string) string {
		service := strings.Index(conf, "SERVICE = {")
		i := service + strings.Index(conf[service:], `"wechat.token.value.>",`)
		return conf[:i] + conf[i+len(`"wechat.token.value.>",`):]
	})
	fake, url := testenv.WeChat(t, fakewechat.Config{Overlap: -1})
	testenv.Refresher(t, connectAs(t, srv, "refresher").nc, publisher.Config{Apps: testenv.Apps(fake, appA), UpstreamURL: url,
		MinForceInterval: time.Nanosecond})
	service := connectAs(t, srv, "service").nc
	awaitEndpoint(t, ctx, service, appA)
	var logs syncBuffer
	set := newSet(t, ctx, service, subscriber.WithLogger(logs.logger()))
	if tok := set.Token(appA); tok.Value != fake.Current(appA) {
		t.Fatalf("the first token: %+v", tok)
	}
	fake.Issue(appA)
	fresh, err := set.Refresh(ctx, appA, set.Token(appA).Revision)
	if err != nil || fresh.Value != fake.Current(appA) {
		t.Fatalf("refresh without the value permission: %+v, %v", fresh, err)
	}
	if !strings.Contains(logs.String(), "may not subscribe to the published tokens") {
		t.Errorf("the refusal was not logged:\n%s", logs.String())
	}
}

// TestSetLooksForANewValueBeforeExpiry: with nobody announcing anything,
// a Set whose value of a key is about to expire reads the bucket and
// finds the newer one.
func TestSetLooksForANewValueBeforeExpiry(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	js, _ := jetstream.New(nc)
	b, err := bucket.Open(ctx, js, bucket.Config{}) // values are said to be published
	if err != nil {
		t.Fatal(err)
	}
	putRecord(t, ctx, b, "long-lived-one", 2*time.Hour) // keys that need nothing do not hold the others back
	data, _ := kv.EncodeCredential(kv.NewCredential(appB, "long-lived-two", 2*time.Hour, time.Now()))
	if _, err := b.Put(ctx, appB, data); err != nil {
		t.Fatal(err)
	}
	set := newSet(t, ctx, nc)
	data, _ = kv.EncodeCredential(kv.NewCredential(appC, "short-lived", 2*time.Second, time.Now()))
	if _, err := b.Put(ctx, appC, data); err != nil {
		t.Fatal(err)
	}
	// The Set learns of appC only by its published value.
	rev, _ := b.Get(ctx, appC)
	nc.PublishMsg(kv.ValueMsg(kv.Subjects{}, appC, rev.Revision(), data))
	awaitSetNewer(t, ctx, set, appC, 0)
	data, _ = kv.EncodeCredential(kv.NewCredential(appC, "its-successor", 2*time.Hour, time.Now()))
	successor, err := b.Put(ctx, appC, data) // never announced
	if err != nil {
		t.Fatal(err)
	}
	if tok := awaitSetNewer(t, ctx, set, appC, successor-1); tok.Value != "its-successor" {
		t.Errorf("the Set holds %q", tok.Value)
	}
	if tok, err := set.Current(appC); err != nil {
		t.Errorf("Current after the sweep: %+v, %v; want the successor, not yet expired", tok, err)
	}
}

const (
	appB = "wxb000000000000002"
	appC = "wxc000000000000003"
)

// TestSetLifecycle: callbacks start once NewSet has returned, with the
// first value of every key; Close from a callback returns; after Close,
// Updated and Done are closed, Current, Refresh and Transport say
// ErrClosed, Token still gives the last values, and nothing the Set
// started is left running.
func TestSetLifecycle(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	sys := startSetSystem(t, ctx, 5, publisher.Config{})
	nc := testenv.Connect(t, sys.srv.ClientURL())
	// nats.go starts a goroutine of the connection's own at its first
	// request: started now, it is not counted as the Set's.
	awaitEndpoint(t, ctx, nc, setApp(0))
	before := goroutines()

	returned := make(chan struct{})
	var set *subscriber.Set
	firsts := make(chan string, 100)
	rotations := make(chan string, 100)
	calls := 0 // the callback goroutine's
	set, err := subscriber.NewSet(ctx, nc,
		subscriber.OnSetRotate(func(s *subscriber.Set, key string, tok subscriber.Token) {
			select {
			case <-returned:
			default:
				t.Errorf("OnSetRotate(%s) before NewSet returned", key)
			}
			if s.Token(key) != tok {
				t.Errorf("OnSetRotate(%s): %+v, the Set holds %+v", key, tok, s.Token(key))
			}
			if calls++; calls <= len(sys.keys()) {
				firsts <- key
				return
			}
			rotations <- key
			s.Close() // from a callback
			rotations <- "closed"
		}),
		subscriber.OnSetError(func(*subscriber.Set, string, error) {}))
	close(returned)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range sys.keys() {
		select {
		case key := <-firsts:
			got = append(got, key)
		case <-ctx.Done():
			t.Fatalf("OnSetRotate had %v", got)
		}
	}
	if slices.Sort(got); !slices.Equal(got, slices.Sorted(slices.Values(sys.keys()))) {
		t.Errorf("OnSetRotate's first values: %v, want one of each key", got)
	}
	ranged := make(chan struct{})
	go func() {
		defer close(ranged)
		for range set.Updated() {
		}
	}()

	sys.rotate(t, ctx, setApp(2))
	for _, want := range []string{setApp(2), "closed"} {
		select {
		case key := <-rotations:
			if key != want {
				t.Errorf("OnSetRotate: %s, want %s", key, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s from OnSetRotate", want)
		}
	}
	select {
	case <-set.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed after Close from a callback")
	}
	select {
	case <-ranged:
	case <-ctx.Done():
		t.Fatal("for range set.Updated() did not end with Close")
	}
	returns(t, "a second Close", time.Second, func() { set.Close() })
	held := set.Token(setApp(2))
	if tok, err := set.Current(setApp(2)); !errors.Is(err, subscriber.ErrClosed) || tok != held || held.Revision == 0 {
		t.Errorf("Current after Close: %+v, %v; want the last value and ErrClosed", tok, err)
	}
	if _, err := set.Refresh(ctx, setApp(2), held.Revision); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Refresh after Close: %v", err)
	}
	client := &http.Client{Transport: set.Transport(setApp(2), nil)}
	if _, err := client.Get(sys.wechatURL + "/cgi-bin/getcallbackip"); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Transport after Close: %v", err)
	}
	if after := settlesTo(before); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before NewSet, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestSetOptionsAreChecked: NewSet refuses what it cannot use, a
// Subscriber's callbacks among them, and New refuses a Set's options, at
// once and with ErrInvalidOption.
func TestSetOptionsAreChecked(t *testing.T) {
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	for name, opt := range map[string]subscriber.Option{
		"OnRotate":          subscriber.OnRotate(func(*subscriber.Subscriber, subscriber.Token) {}),
		"OnError":           subscriber.OnError(func(*subscriber.Subscriber, error) {}),
		"nil OnSetRotate":   subscriber.OnSetRotate(nil),
		"nil OnSetError":    subscriber.OnSetError(nil),
		"no keys":           subscriber.WithKeys(),
		"a key of no kind":  subscriber.WithKeys(appA, appA+".force_budget"),
		"nil logger":        subscriber.WithLogger(nil),
		"nil option":        nil,
		"a bucket with a *": subscriber.WithBucket("a*"),
	} {
		t.Run(name, func(t *testing.T) {
			var set *subscriber.Set
			var err error
			returns(t, "NewSet", 5*time.Second, func() { set, err = subscriber.NewSet(context.Background(), nc, opt) })
			if !errors.Is(err, subscriber.ErrInvalidOption) {
				t.Errorf("NewSet: %v, want ErrInvalidOption", err)
			}
			if set != nil {
				set.Close()
			}
		})
	}
	for name, opt := range map[string]subscriber.Option{
		"WithKeys":    subscriber.WithKeys(appA),
		"OnSetRotate": subscriber.OnSetRotate(func(*subscriber.Set, string, subscriber.Token) {}),
		"OnSetError":  subscriber.OnSetError(func(*subscriber.Set, string, error) {}),
	} {
		t.Run("New with "+name, func(t *testing.T) {
			var err error
			returns(t, "New", 5*time.Second, func() { _, err = subscriber.New(context.Background(), nc, appA, opt) })
			if !errors.Is(err, subscriber.ErrInvalidOption) {
				t.Errorf("New: %v, want ErrInvalidOption", err)
			}
		})
	}
}

// TestNewSetGivesUpWithItsContext: with no bucket (no refresher ever ran),
// NewSet returns when its context ends, saying what it waited for.
func TestNewSetGivesUpWithItsContext(t *testing.T) {
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := subscriber.NewSet(ctx, nc)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, kv.ErrNoBucket) {
		t.Errorf("NewSet without a bucket: %v, want the deadline and the missing bucket", err)
	}
}
