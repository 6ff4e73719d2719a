package publisher

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestASlowTokenBucketStallsNoPlatformUpdateOrReload: authorizers that
// come make the credentials again, on the platform bucket's follower, and
// the token bucket is read for the keys added. With the token bucket's
// reads out of reach (refused without an answer, so each waits until it
// gives up), neither the follower (its next entry) nor a reload waits for
// that read.
func TestASlowTokenBucketStallsNoPlatformUpdateOrReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The refresher may not read a value of the token bucket: a direct
	// get is refused, which a client learns only when it gives up.
	srv := natstest.Server(t, func(o *server.Options) {
		all := &server.SubjectPermission{Allow: []string{">"}}
		o.Users = []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: "refresher", Password: "refresher", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.DIRECT.GET.KV_" + kv.DefaultBucket + ".>"}},
				Subscribe: all,
			}},
		}
	})
	nc, _ := natstest.Connect(t, srv.ClientURL(), nats.UserInfo("refresher", "refresher"))
	_, admin := natstest.Connect(t, srv.ClientURL(), nats.UserInfo("admin", "admin"))

	logs := &logLines{}
	platform := App{AppID: component, Secret: NewSecret("s"), Platform: &Platform{MessageToken: NewSecret("t"), EncodingAESKey: NewSecret(testAESKey)}}
	r, err := New(nc, Config{Apps: []App{platform}, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.creds.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.platforms.Open(ctx); err != nil {
		t.Fatal(err)
	}
	r.creds.FollowerSynced() // the token bucket has been read: keys added are read one by one
	followed := make(chan struct{})
	followCtx, stopFollowing := context.WithCancel(ctx)
	defer func() {
		stopFollowing()
		<-followed
	}()
	if !r.platforms.Follow(followCtx, nc, followed) {
		t.Fatal("the platform bucket was never read")
	}
	platforms, err := admin.KeyValue(ctx, kv.DefaultPlatformBucket)
	if err != nil {
		t.Fatal(err)
	}
	authorize := func(appid string) {
		t.Helper()
		data, _ := kv.EncodeAuthorizer(kv.Authorizer{ComponentAppID: component, AppID: appid, RefreshToken: "refresh", IssuedAt: time.Now()})
		if _, err := platforms.Put(ctx, kv.AuthorizerKey(component, appid), data); err != nil {
			t.Fatal(err)
		}
	}
	const gaveUp = "cannot read the tokens of apps just added"

	// The first authorizer's read waits; the follower takes in the next
	// entry meanwhile.
	authorize(authorizer)
	if err := logs.await(ctx, whyAuthorizers+`.* added=`+authorizer); err != nil {
		t.Fatal(err)
	}
	const second = "wx00000000000a0002"
	authorize(second)
	if err := logs.await(ctx, whyAuthorizers+`.* added=`+second); err != nil {
		t.Fatal(err)
	}
	if logs.has(gaveUp) {
		t.Fatal("the platform bucket's follower waited for the token bucket until the read gave up")
	}
	if err := r.SetApps([]App{platform}); err != nil {
		t.Fatal(err)
	}
	if logs.has(gaveUp) {
		t.Error("the reload waited for the token bucket until the read gave up")
	}
}

// logLines is a log handler that keeps each record's message and
// attributes as a line, and says when a line matches.
type logLines struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }

func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, b.String())
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return nil
}

// has reports whether a line holds s.
func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// await waits until a line matches pattern, a regular expression.
func (l *logLines) await(ctx context.Context, pattern string) error {
	re := regexp.MustCompile(pattern)
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			if re.MatchString(line) {
				l.mu.Unlock()
				return nil
			}
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
