// Package wxtokentest runs wxtoken inside a service's own tests: an
// embedded NATS server with JetStream, a fake WeChat, and a refresher
// keeping the apps' tokens, in one call, as net/http/httptest does for
// HTTP servers.
//
//	sys := wxtokentest.Start(t, "wx1234567890abcdef")
//	nc, _ := nats.Connect(sys.URL())
//	sub, _ := subscriber.New(ctx, nc, "wx1234567890abcdef")
//	sys.Reject("wx1234567890abcdef") // WeChat now answers 40001 to the token
//
// Each app has its jsapi_ticket and wx_card ticket kept too, under
// "<appid>.jsapi_ticket" and "<appid>.wx_card_ticket", so that a service
// can test signing (package jssdk) as well. A service that follows many
// apps with a subscriber.Set (a third-party platform's backend, serving
// the accounts that authorized it) tests their coming and going with
// AddApps and Withdraw.
//
// The fake WeChat answers /cgi-bin/token, /cgi-bin/ticket/getticket and
// /cgi-bin/getcallbackip (at WeChatURL) as WeChat does: a token lives two
// hours, a new one invalidates the one before, and a rejected token gets
// errcode 40001.
// Unlike WeChat, it invalidates the previous token at once rather than
// after five minutes, so that a test sees a rejection when it asks for one.
// Everything listens on 127.0.0.1, on ports of its own.
package wxtokentest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

// System is wxtoken running for a test. Its methods are safe for
// concurrent use.
type System struct {
	dir       string
	apps      map[string]bool
	natsURL   string
	wechatURL string
	srv       *server.Server
	wechat    *httptest.Server
	fake      *fakewechat.Server
	nc        *nats.Conn
	bucket    jetstream.KeyValue
	refresher *publisher.Refresher

	mu   sync.Mutex      // guards apps and kept
	kept []publisher.App // the apps the refresher keeps

	stop    context.CancelFunc
	ran     chan error
	closing sync.Once
}

// Start runs a System keeping a token and tickets for each appid, and
// stops it when the test ends. It returns once they are all in the
// bucket, within 30s.
func Start(tb testing.TB, appids ...string) *System {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, appids...)
	if err != nil {
		tb.Fatalf("wxtokentest: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// New runs a System keeping a token for each appid (each with a secret of
// its own at the fake WeChat), for tests without a testing.TB, examples
// and TestMain among them. It returns once every token is in the bucket;
// ctx bounds that wait. Close stops it.
func New(ctx context.Context, appids ...string) (*System, error) {
	if len(appids) == 0 {
		return nil, errors.New("wxtokentest: no appids")
	}
	dir, err := os.MkdirTemp("", "wxtokentest")
	if err != nil {
		return nil, fmt.Errorf("wxtokentest: %w", err)
	}
	s := &System{dir: dir, apps: map[string]bool{}, ran: make(chan error, 1)}
	if err := s.start(ctx, appids); err != nil {
		s.Close()
		return nil, fmt.Errorf("wxtokentest: %w", err)
	}
	return s, nil
}

func (s *System) start(ctx context.Context, appids []string) error {
	opts, err := embedded.Options("127.0.0.1:-1", s.dir)
	if err != nil {
		return err
	}
	if s.srv, err = embedded.Start(opts, nil); err != nil {
		return err
	}
	s.fake = fakewechat.New(fakewechat.Config{Overlap: -1})
	s.wechat = httptest.NewServer(s.fake)
	s.kept = s.register(appids)
	s.natsURL, s.wechatURL = s.srv.ClientURL(), s.wechat.URL
	if s.nc, err = nats.Connect(s.natsURL); err != nil {
		return err
	}
	refresher, err := publisher.New(s.nc, publisher.Config{
		Apps:             s.kept,
		UpstreamURL:      s.wechat.URL,
		UpstreamTimeout:  2 * time.Second,
		MinForceInterval: time.Nanosecond, // Rotate as often as a test likes
		Instance:         "wxtokentest",
		Logger:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	s.refresher = refresher
	run, stop := context.WithCancel(context.Background())
	s.stop = stop
	go func() { s.ran <- refresher.Run(run) }()
	return s.awaitStored(ctx, appids)
}

// register gives each app a secret of its own at the fake WeChat, and
// returns the apps for the refresher, each with its tickets.
func (s *System) register(appids []string) []publisher.App {
	apps := make([]publisher.App, len(appids))
	for i, id := range appids {
		s.apps[id] = true
		secret := "wxtokentest-secret-of-" + id
		s.fake.AddApp(id, secret)
		apps[i] = publisher.App{AppID: id, Secret: publisher.NewSecret(secret),
			Tickets: []publisher.Ticket{publisher.TicketJSAPI, publisher.TicketWxCard}}
	}
	return apps
}

// awaitStored waits until the bucket holds the token and tickets of each
// app.
func (s *System) awaitStored(ctx context.Context, appids []string) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return err
	}
	for {
		if s.bucket == nil {
			s.bucket, _ = kv.Bind(ctx, js, "")
		}
		if s.bucket != nil && s.allStored(ctx, appids) {
			return nil
		}
		select {
		case err := <-s.ran:
			s.ran <- err
			return fmt.Errorf("the refresher stopped: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("no tokens yet: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// AddApps has the refresher keep more apps (a platform's accounts that
// authorized it, say), each with its tickets, and returns once their
// values are in the bucket: a subscriber.Set that follows every key holds
// them at once. ctx bounds the wait.
func (s *System) AddApps(ctx context.Context, appids ...string) error {
	s.mu.Lock()
	for _, id := range appids {
		if s.apps[id] {
			s.mu.Unlock()
			return fmt.Errorf("wxtokentest: %s is kept already", id)
		}
	}
	s.kept = append(s.kept, s.register(appids)...)
	err := s.refresher.SetApps(s.kept)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("wxtokentest: %w", err)
	}
	if err := s.awaitStored(ctx, appids); err != nil {
		return fmt.Errorf("wxtokentest: %w", err)
	}
	return nil
}

// Withdraw removes appid's token and tickets for good, as the refresher
// does for an account that withdrew its authorization from the platform:
// the refresher stops keeping them, and services following the keys say
// they are removed (subscriber.ErrRemoved; wxtoken agent's 410).
func (s *System) Withdraw(ctx context.Context, appid string) error {
	s.app(appid)
	s.mu.Lock()
	s.kept = slices.DeleteFunc(s.kept, func(a publisher.App) bool { return a.AppID == appid })
	err := s.refresher.SetApps(s.kept)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("wxtokentest: %w", err)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("wxtokentest: %w", err)
	}
	for _, kind := range []string{kv.KindToken, kv.KindJSAPITicket, kv.KindWxCardTicket} {
		key := kv.Key(appid, kind)
		e, err := s.bucket.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("wxtokentest: withdraw %s: %w", key, err)
		}
		rev, err := kv.Remove(ctx, js, s.bucket.Bucket(), key, e.Revision(), kv.RemovedUnauthorized)
		if err != nil {
			return fmt.Errorf("wxtokentest: withdraw %s: %w", key, err)
		}
		if err := s.nc.PublishMsg(kv.RemovalMsg(kv.Subjects{}, key, rev, kv.RemovedUnauthorized)); err != nil {
			return fmt.Errorf("wxtokentest: withdraw %s: %w", key, err)
		}
		ev, _ := json.Marshal(kv.RemovalEvent{AppID: appid, Kind: kind, Revision: rev, Reason: kv.RemovedUnauthorized, RemovedAt: time.Now().UTC()})
		if err := s.nc.Publish(kv.Subjects{}.Removed(key), ev); err != nil {
			return fmt.Errorf("wxtokentest: withdraw %s: %w", key, err)
		}
	}
	return s.nc.FlushWithContext(ctx)
}

func (s *System) allStored(ctx context.Context, appids []string) bool {
	for _, id := range appids {
		for _, kind := range []string{kv.KindToken, kv.KindJSAPITicket, kv.KindWxCardTicket} {
			if _, err := s.bucket.Get(ctx, kv.Key(id, kind)); err != nil {
				return false
			}
		}
	}
	return true
}

// Close stops the refresher, the fake WeChat and the NATS server, and
// removes what they stored. It is idempotent, and the other methods are
// not to be called after it.
func (s *System) Close() {
	s.closing.Do(func() {
		if s.stop != nil {
			s.stop()
			<-s.ran
		}
		if s.nc != nil {
			s.nc.Close()
		}
		if s.wechat != nil {
			s.wechat.Close()
		}
		if s.srv != nil {
			s.srv.Shutdown()
			s.srv.WaitForShutdown()
		}
		os.RemoveAll(s.dir)
	})
}

// URL is where the NATS server takes clients: connect the service to it.
func (s *System) URL() string { return s.natsURL }

// WeChatURL is the fake WeChat's base URL, in place of
// https://api.weixin.qq.com.
func (s *System) WeChatURL() string { return s.wechatURL }

// app panics unless the System keeps appid: a test that names another is
// wrong, and counts of an app nobody keeps would pass by accident.
func (s *System) app(appid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.apps[appid] {
		panic(fmt.Sprintf("wxtokentest: this System keeps no app %q", appid))
	}
	return appid
}

// Token is appid's newest token at WeChat: the one that works.
func (s *System) Token(appid string) string { return s.fake.Current(s.app(appid)) }

// Valid reports whether WeChat accepts token now.
func (s *System) Valid(token string) bool {
	ok, _ := s.fake.Valid(token)
	return ok
}

// Reject makes WeChat reject appid's token from now on, as when someone
// else fetched a new one: API calls with it get errcode 40001. The
// refresher replaces it once a service reports it (subscriber.Refresh, or
// the subscriber's Transport).
func (s *System) Reject(appid string) { s.fake.Issue(s.app(appid)) }

// Rotate has the refresher replace appid's token now, as when it was
// rejected and a service reported it, and returns the new revision. It
// rejects the token first (see Reject): if the refresher then gets no new
// one (see FailFetches), the token services hold stays rejected.
func (s *System) Rotate(ctx context.Context, appid string) (uint64, error) {
	e, err := s.bucket.Get(ctx, s.app(appid))
	if err != nil {
		return 0, fmt.Errorf("wxtokentest: rotate %s: %w", appid, err)
	}
	s.Reject(appid)
	rev := e.Revision()
	msg, err := s.nc.RequestWithContext(ctx, kv.Subjects{}.Refresh(appid), kv.EncodeRefreshRequest(kv.RefreshRequest{StaleRevision: &rev}))
	if err != nil {
		return 0, fmt.Errorf("wxtokentest: rotate %s: %w", appid, err)
	}
	var reply kv.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return 0, fmt.Errorf("wxtokentest: rotate %s: %w", appid, err)
	}
	if reply.Error != nil {
		return 0, fmt.Errorf("wxtokentest: rotate %s: %w", appid, reply.Error)
	}
	return reply.Revision, nil
}

// FailFetches makes WeChat refuse appid's token fetches with errcode
// (45009 for the daily quota, 40164 for an IP not whitelisted, -1 for
// busy, ...) until Heal.
func (s *System) FailFetches(appid string, errcode int) {
	s.fake.Fail(s.app(appid), fakewechat.Fault{ErrCode: errcode})
}

// Heal ends FailFetches.
func (s *System) Heal(appid string) { s.fake.Heal(s.app(appid)) }

// Fetches is the number of token fetches WeChat had for appid, refused
// ones included: a service that keeps its tokens through wxtoken makes
// none itself.
func (s *System) Fetches(appid string) int { return s.fake.Calls(s.app(appid)) }

// JSAPITicket is appid's current jsapi_ticket at WeChat: a service's test
// can check a wx.config signature with it (jssdk.Signature).
func (s *System) JSAPITicket(appid string) string {
	ticket, _ := s.fake.Ticket(s.app(appid), "jsapi")
	return ticket
}
