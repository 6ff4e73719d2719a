// Package platform is the refresher's side of third-party platforms (开放平台):
// what cannot be fetched again lives in the platform bucket, and this
// package owns it. The verify tickets WeChat pushes (to the callback, on
// any replica) are stored there, and every replica follows the bucket; an
// account that authorized a platform is a record there, with the refresh
// token that gets its access_token (Authorizer), which the leader replaces
// whenever WeChat returns one. What the refresher's loop must act on (a
// ticket pushed, authorizers that came or went, one that withdrew) it is
// told through the callbacks of Config, called with no lock of this
// package held; its locks are taken by nothing else, so the loop may ask
// an Authorizer under its own.
//
// Reading order: platform.go (Platforms, the follower), authorizer.go (an
// authorizer's record and refresh token), events.go (what the callback
// takes in), callback.go (the HTTP handler), replay.go, tend.go.
package platform

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// history is the revisions the platform bucket keeps per key at least: an
// authorizer's refresh tokens before the current one, for an operator who
// must look back.
const history = 16

// Config is how the refresher keeps its platforms.
type Config struct {
	Bucket   string // the platform bucket (kv.DefaultPlatformBucket)
	Replicas int    // of the buckets
	History  int    // revisions kept per key, if more than 16
	Now      func() time.Time
	Logger   *slog.Logger

	// What the refresher does when the platform bucket changes; each may
	// be nil, and none runs under a lock of this package.
	OnTicket      func(component string) // a newer verify ticket: a component token that waits for one may go
	OnAuthorizers func()                 // authorizers came or went, once the bucket has been read: make the credentials again
	OnRecord      func(appid string)     // an authorizer's newer record (a code, a refresh token): a fetch refused before may go
	OnWithdrawn   func(appid string)     // an authorizer withdrew its authorization: its token goes
}

// Platform is a platform of the apps file: its component appid, and what
// its pushes are checked and decrypted with.
type Platform struct {
	AppID                        string
	MessageToken, EncodingAESKey upstream.Secret
}

// Platforms is what the refresher knows of the platform bucket.
type Platforms struct {
	cfg      Config
	js       jetstream.JetStream
	bucket   atomic.Pointer[jetstream.KeyValue]          // once open
	crypters atomic.Pointer[map[string]*wxcrypt.Crypter] // the platforms' pushes, by component appid
	served   atomic.Pointer[[]string]                    // the platforms of the apps file, sorted
	replays  *replayGuard                                // the callbacks', shared by the replicas
	tending  sync.Mutex                                  // one Tend at a time

	mu          sync.Mutex
	tickets     map[string]kv.VerifyTicket // by component appid
	authorizers map[string]*Authorizer     // the active ones, by authorizer appid
	records     map[string]uint64          // the platforms recorded as served, by component appid: their revisions
	synced      bool                       // the follower delivered what the bucket held
	changed     bool                       // authorizers came or went since the last Authorizers
}

// New returns the platforms of no apps, with js for their buckets.
func New(js jetstream.JetStream, cfg Config) *Platforms {
	p := &Platforms{cfg: cfg, js: js, replays: newReplayGuard(js, cfg),
		tickets: map[string]kv.VerifyTicket{}, authorizers: map[string]*Authorizer{}, records: map[string]uint64{}}
	p.served.Store(&[]string{})
	return p
}

// Serve makes the platforms those the refresher serves from now on: their
// pushes are taken in, and the next Tend records them.
func (p *Platforms) Serve(platforms []Platform) error {
	m := map[string]*wxcrypt.Crypter{}
	served := make([]string, 0, len(platforms))
	for _, pl := range platforms {
		c, err := Crypter(pl)
		if err != nil {
			return fmt.Errorf("platform %s: %w", pl.AppID, err)
		}
		m[pl.AppID] = c
		served = append(served, pl.AppID)
	}
	slices.Sort(served)
	p.crypters.Store(&m)
	p.served.Store(&served)
	return nil
}

// Crypter returns what checks and decrypts the pushes to pl.
func Crypter(pl Platform) (*wxcrypt.Crypter, error) {
	c, err := wxcrypt.New(pl.MessageToken.Reveal(), pl.EncodingAESKey.Reveal(), pl.AppID)
	if err != nil {
		return nil, fmt.Errorf("encoding_aes_key is not a 43-character EncodingAESKey")
	}
	return c, nil
}

// Open creates or opens the platform bucket: replicas as the token
// bucket's, history kept, and no MaxAge, for a refresh token lives as long
// as its authorization.
func (p *Platforms) Open(ctx context.Context) error {
	b, err := p.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      p.cfg.Bucket,
		Description: "wxtoken: third-party platforms' verify tickets and authorizers' refresh tokens (refresher only)",
		History:     uint8(max(history, p.cfg.History)),
		Replicas:    p.cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("publisher: platform bucket %s: %w", p.cfg.Bucket, err)
	}
	p.bucket.Store(&b)
	return nil
}

// Opened reports whether the platform bucket is open.
func (p *Platforms) Opened() bool { return p.bucket.Load() != nil }

// Ticket returns the newest verify ticket of the platform component.
func (p *Platforms) Ticket(component string) (kv.VerifyTicket, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tickets[component]
	return t, ok
}

// Authorizer returns the record of the active authorizer appid, nil if it
// is none (it withdrew, or never authorized).
func (p *Platforms) Authorizer(appid string) *Authorizer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.authorizers[appid]
}

// Authorizers returns the active authorizers, by appid.
func (p *Platforms) Authorizers() []*Authorizer {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.changed = false
	return slices.SortedFunc(maps.Values(p.authorizers), func(a, b *Authorizer) int { return strings.Compare(a.AppID, b.AppID) })
}

// Follow follows the platform bucket, if it is open, until ctx ends, and
// returns once it has delivered what the bucket held; false if ctx ended
// first. done closes when the follower has stopped.
func (p *Platforms) Follow(ctx context.Context, nc *nats.Conn, done chan<- struct{}) bool {
	b := p.bucket.Load()
	if b == nil {
		close(done)
		return true
	}
	synced := make(chan struct{})
	var once sync.Once
	follower := &kvwatch.Follower{
		Bucket:  *b,
		Key:     ">",
		Conn:    nc,
		OnEntry: p.observe,
		OnSynced: func() {
			p.read()
			once.Do(func() { close(synced) })
		},
		OnError: func(err error) { p.cfg.Logger.Warn("platform bucket watch interrupted, resuming", "error", err) },
	}
	go func() {
		defer close(done)
		follower.Run(ctx)
	}()
	select {
	case <-synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// read is the follower's OnSynced: the first time, the authorizers the
// bucket held are made credentials.
func (p *Platforms) read() {
	p.mu.Lock()
	first := !p.synced
	p.synced = true
	p.mu.Unlock()
	if first {
		p.call(p.cfg.OnAuthorizers)
	}
}

// observe takes in an entry of the platform bucket, on every replica: a
// verify ticket, a platform's record, or an authorizer's record.
func (p *Platforms) observe(e jetstream.KeyValueEntry) {
	defer func() {
		if r := recover(); r != nil {
			p.cfg.Logger.Error("recovered from a panic", "panic", fmt.Sprint(r))
		}
	}()
	// The credentials are made again once a burst of entries is in,
	// whatever its last entry is.
	defer func() {
		if e.Delta() == 0 {
			p.rebuildIfChanged()
		}
	}()
	if component, ok := strings.CutSuffix(e.Key(), ".verify_ticket"); ok {
		p.observeTicket(component, e)
		return
	}
	if component, ok := kv.SplitPlatformKey(e.Key()); ok {
		p.mu.Lock()
		if e.Operation() == jetstream.KeyValuePut {
			p.records[component] = e.Revision()
		} else {
			delete(p.records, component)
		}
		p.mu.Unlock()
		return
	}
	if component, appid, ok := kv.SplitAuthorizerKey(e.Key()); ok {
		p.observeAuthorizer(component, appid, e)
	}
}

// observeAuthorizer takes in an authorizer's record: a newer one of an
// active authorizer, one that came, or one that withdrew.
func (p *Platforms) observeAuthorizer(component, appid string, e jetstream.KeyValueEntry) {
	var rec kv.Authorizer
	active := false
	if e.Operation() == jetstream.KeyValuePut {
		decoded, err := kv.DecodeAuthorizer(e.Key(), e.Value())
		if err != nil {
			p.cfg.Logger.Error("the platform bucket holds an undecodable authorizer record; ignoring it", "key", e.Key(), "revision", e.Revision(), "error", err)
			return
		}
		rec, active = decoded, decoded.Active()
	}
	p.mu.Lock()
	held := p.authorizers[appid]
	switch {
	case held != nil && held.Component != component:
		p.mu.Unlock()
		p.cfg.Logger.Error("an account authorized two platforms of this refresher; its token is kept for the first only",
			"authorizer", appid, "kept", held.Component, "ignored", component)
		return
	case held != nil && active:
		p.mu.Unlock()
		held.take(e.Revision(), rec)
		return
	case active:
		p.authorizers[appid] = &Authorizer{p: p, Component: component, AppID: appid, rev: e.Revision(), record: rec}
		p.changed = true
		p.mu.Unlock()
		return
	case held != nil:
		if e.Revision() <= held.revision() {
			p.mu.Unlock()
			return
		}
		delete(p.authorizers, appid)
		held.withdraw()
		p.changed = true
	}
	p.mu.Unlock()
	if held != nil {
		p.call1(p.cfg.OnWithdrawn, appid)
	}
}

func (p *Platforms) observeTicket(component string, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	ticket, err := kv.DecodeVerifyTicket(component, e.Value())
	if err != nil {
		p.cfg.Logger.Error("the platform bucket holds an undecodable verify ticket; ignoring it", "component_appid", component, "error", err)
		return
	}
	p.mu.Lock()
	held, had := p.tickets[component]
	newer := !had || ticket.Newer(held)
	if newer {
		p.tickets[component] = ticket
	}
	p.mu.Unlock()
	if newer {
		p.call1(p.cfg.OnTicket, component)
	}
}

// rebuildIfChanged has the credentials made again if authorizers came or
// went since they were made, once the bucket has been read.
func (p *Platforms) rebuildIfChanged() {
	p.mu.Lock()
	rebuild := p.changed && p.synced
	p.mu.Unlock()
	if rebuild {
		p.call(p.cfg.OnAuthorizers)
	}
}

func (p *Platforms) call(f func()) {
	if f != nil {
		f()
	}
}

func (p *Platforms) call1(f func(string), arg string) {
	if f != nil {
		f(arg)
	}
}

// Served returns the component appids of the platforms served, sorted.
func (p *Platforms) Served() []string { return *p.served.Load() }

// now is the refresher's clock.
func (p *Platforms) now() time.Time { return p.cfg.Now() }
