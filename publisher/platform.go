package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/internal/platform"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// A third-party platform (开放平台) is an app whose token is the
// component_access_token, fetched with the newest verify ticket WeChat
// pushed; the accounts that authorized it are credentials of their own,
// each under its appid, fetched with the component token (their parent,
// as an app's token is a ticket's). What cannot be fetched again lives in
// the platform bucket: the verify tickets, which any replica's callback
// stores, and each authorizer's record with its refresh token, which the
// leader replaces whenever WeChat returns one. Every replica follows the
// platform bucket; its authorizers come and go with their records.

// ticketWait is how long a platform without a ticket that works waits for
// the next push before it restarts the push again; a push ends the wait.
const ticketWait = 10 * time.Minute

// platformHistory is the revisions the platform bucket keeps per key: an
// authorizer's refresh tokens before the current one, for an operator who
// must look back.
const platformHistory = 16

// authorizerState is what an authorizer's credential knows of its record in
// the platform bucket. The credential's mu guards it.
type authorizerState struct {
	component string
	rev       uint64        // of record
	record    kv.Authorizer // the newest seen or written
	// unsaved is a refresh token WeChat returned that the bucket does not
	// hold yet: it is written before anything else is fetched, and its
	// Code is the authorization code the call spent.
	unsaved *kv.Authorizer
}

// platforms is what the refresher knows of the platform bucket.
type platforms struct {
	mu          sync.Mutex
	tickets     map[string]kv.VerifyTicket // by component appid
	authorizers map[string]authorizerEntry // the active ones, by authorizer appid
	revoked     map[string]bool            // authorizer appids that withdrew: their tokens go
	records     map[string]uint64          // the platforms recorded as served, by component appid: their revisions
	synced      bool                       // the follower delivered what the bucket held
	changed     bool                       // authorizers changed since the credentials were built
}

type authorizerEntry struct {
	rev    uint64
	record kv.Authorizer
}

func newPlatforms() *platforms {
	return &platforms{tickets: map[string]kv.VerifyTicket{}, authorizers: map[string]authorizerEntry{}, revoked: map[string]bool{},
		records: map[string]uint64{}}
}

func (p *platforms) ticket(component string) (kv.VerifyTicket, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tickets[component]
	return t, ok
}

// snapshot returns the active authorizers.
func (p *platforms) snapshot() map[string]authorizerEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.changed = false
	return maps.Clone(p.authorizers)
}

// hasPlatforms reports whether any of apps is a third-party platform.
func hasPlatforms(apps []App) bool {
	return slices.ContainsFunc(apps, App.platform)
}

// observePlatform takes in an entry of the platform bucket, on every
// replica: a verify ticket, or an authorizer's record.
func (r *Refresher) observePlatform(e jetstream.KeyValueEntry) {
	defer func() {
		if p := recover(); p != nil {
			r.logPanic(p)
		}
	}()
	// The credentials are made again once a burst of entries is in,
	// whatever its last entry is.
	defer func() {
		if e.Delta() == 0 {
			r.rebuildIfChanged()
		}
	}()
	if component, ok := strings.CutSuffix(e.Key(), ".verify_ticket"); ok {
		r.observeTicket(component, e)
		return
	}
	if component, ok := kv.SplitPlatformKey(e.Key()); ok {
		r.platforms.mu.Lock()
		if e.Operation() == jetstream.KeyValuePut {
			r.platforms.records[component] = e.Revision()
		} else {
			delete(r.platforms.records, component)
		}
		r.platforms.mu.Unlock()
		return
	}
	component, appid, ok := kv.SplitAuthorizerKey(e.Key())
	if !ok {
		return
	}
	var rec kv.Authorizer
	active := false
	if e.Operation() == jetstream.KeyValuePut {
		decoded, err := kv.DecodeAuthorizer(e.Key(), e.Value())
		if err != nil {
			r.log.Error("the platform bucket holds an undecodable authorizer record; ignoring it", "key", e.Key(), "revision", e.Revision(), "error", err)
			return
		}
		rec, active = decoded, decoded.Active()
	}
	p := r.platforms
	p.mu.Lock()
	held, had := p.authorizers[appid]
	switch {
	case had && held.record.ComponentAppID != component:
		p.mu.Unlock()
		r.log.Error("an account authorized two platforms of this refresher; its token is kept for the first only",
			"authorizer", appid, "kept", held.record.ComponentAppID, "ignored", component)
		return
	case had && e.Revision() <= held.rev:
		p.mu.Unlock()
		return
	case active:
		p.authorizers[appid] = authorizerEntry{rev: e.Revision(), record: rec}
		delete(p.revoked, appid)
		p.changed = p.changed || !had
	case had:
		delete(p.authorizers, appid)
		p.revoked[appid] = true
		p.changed = true
	}
	p.mu.Unlock()

	if c := r.credential(appid); c != nil && c.auth != nil && active {
		r.takeRecord(c, e.Revision(), rec)
	}
}

// rebuildIfChanged makes the credentials again if authorizers came or went
// since they were made, once the bucket has been read.
func (r *Refresher) rebuildIfChanged() {
	r.platforms.mu.Lock()
	rebuild := r.platforms.changed && r.platforms.synced
	r.platforms.mu.Unlock()
	if rebuild {
		r.rebuild()
	}
}

// resyncAuthorizers gives the authorizers of set the records that came in
// after the snapshot set was made from, while no credential of set could
// take them.
func (r *Refresher) resyncAuthorizers(set *credentialSet) {
	r.platforms.mu.Lock()
	var behind []*credential
	var entries []authorizerEntry
	for _, c := range set.order {
		if c.auth == nil {
			continue
		}
		e, ok := r.platforms.authorizers[c.key]
		c.mu.Lock()
		if ok && e.rev > c.auth.rev {
			behind, entries = append(behind, c), append(entries, e)
		}
		c.mu.Unlock()
	}
	r.platforms.mu.Unlock()
	for i, c := range behind {
		r.takeRecord(c, entries[i].rev, entries[i].record)
	}
}

// readRecord reads an authorizer's record before a fetch, and takes it in
// if it is newer than the one the follower gave. A failed read leaves the
// record known: the fetch goes on with it.
func (r *Refresher) readRecord(t *term, a *credential) {
	b := r.platformBucket.Load()
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	e, err := (*b).Get(ctx, kv.AuthorizerKey(a.auth.component, a.key))
	if err != nil {
		return
	}
	if rec, err := kv.DecodeAuthorizer(e.Key(), e.Value()); err == nil && rec.Active() {
		r.takeRecord(a, e.Revision(), rec)
	}
}

// takeRecord gives an authorizer's credential its newest record: the
// refresh token another leader stored, or a code to exchange.
func (r *Refresher) takeRecord(c *credential, rev uint64, rec kv.Authorizer) {
	c.mu.Lock()
	if rev > c.auth.rev {
		c.auth.rev, c.auth.record = rev, rec
		if u := c.auth.unsaved; u == nil || !u.IssuedAt.After(rec.IssuedAt) {
			c.auth.unsaved = nil
			c.secret = NewSecret(rec.RefreshToken)
		}
		if upstream.ClassOf(c.lastErr) == upstream.ClassConfig {
			// A new code or refresh token: the one refused is replaced.
			c.failures, c.retryAt, c.lastErr = 0, time.Time{}, nil
		}
	}
	c.mu.Unlock()
	if t := r.term.Load(); t != nil {
		r.plan(t, c)
	}
}

func (r *Refresher) observeTicket(component string, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	ticket, err := kv.DecodeVerifyTicket(component, e.Value())
	if err != nil {
		r.log.Error("the platform bucket holds an undecodable verify ticket; ignoring it", "component_appid", component, "error", err)
		return
	}
	p := r.platforms
	p.mu.Lock()
	held, had := p.tickets[component]
	newer := !had || ticket.Newer(held)
	if newer {
		p.tickets[component] = ticket
	}
	p.mu.Unlock()
	c := r.credential(component)
	if !newer || c == nil {
		return
	}
	c.mu.Lock()
	waiting := upstream.ClassOf(c.lastErr) == upstream.ClassTicket
	if waiting {
		c.failures, c.retryAt, c.lastErr = 0, time.Time{}, nil
	}
	c.mu.Unlock()
	if waiting {
		r.log.Info("verify ticket pushed: fetching the component token", "component_appid", component)
	}
	if t := r.term.Load(); t != nil {
		r.plan(t, c)
	}
}

// platformsSynced is the platform follower's OnSynced.
func (r *Refresher) platformsSynced() {
	r.platforms.mu.Lock()
	first := !r.platforms.synced
	r.platforms.synced = true
	r.platforms.mu.Unlock()
	if first {
		r.rebuild()
	}
}

// rebuild makes the credentials again after authorizers came or went. It
// runs on the platform bucket's follower, which reads the token bucket for
// the credentials added on another goroutine: a slow token bucket must not
// hold up the platform's next entries.
func (r *Refresher) rebuild() {
	r.reloading.Lock()
	added := r.replaceCredentials(r.configured, whyAuthorizers)
	r.reloading.Unlock()
	r.background.Go(func() { r.readAdded(added) })
}

// authorizerCredentials adds to set a credential for each active
// authorizer of a platform set holds, reusing those old holds.
func authorizerCredentials(set *credentialSet, authorizers map[string]authorizerEntry, old *credentialSet, log func(msg string, args ...any)) {
	for _, appid := range slices.Sorted(maps.Keys(authorizers)) {
		e := authorizers[appid]
		component := set.byKey[e.record.ComponentAppID]
		if component == nil || component.kind != kv.KindToken || component.parent != nil {
			continue // a platform no longer configured
		}
		if _, ok := component.src.(componentSource); !ok {
			continue
		}
		if taken := set.byKey[appid]; taken != nil {
			log("an authorizer's appid is an app of the apps file too; its token is kept as the app's", "authorizer", appid)
			continue
		}
		c := old.find(appid)
		switch {
		case c == nil || c.auth == nil || c.parent != component:
			c = &credential{key: appid, kind: kv.KindToken, parent: component, src: authorizerSource{component: component.key},
				secret: NewSecret(e.record.RefreshToken), auth: &authorizerState{component: component.key, rev: e.rev, record: e.record}}
		default:
			c.mu.Lock()
			if e.rev > c.auth.rev && c.auth.unsaved == nil {
				c.auth.rev, c.auth.record = e.rev, e.record
				c.secret = NewSecret(e.record.RefreshToken)
			}
			c.mu.Unlock()
		}
		set.byKey[appid] = c
		set.order = append(set.order, c)
	}
}

// holdRefresh keeps the refresh token a fetch returned, until saveRefresh
// stores it. code is the authorization code the fetch spent, if any.
func (r *Refresher) holdRefresh(a *credential, issued issuedValue, code string) {
	if a.auth == nil || issued.Refresh.IsZero() {
		return
	}
	a.mu.Lock()
	a.auth.unsaved = &kv.Authorizer{RefreshToken: issued.Refresh.Reveal(), IssuedAt: issued.At, Code: code}
	a.mu.Unlock()
}

// saveRefresh stores the refresh token WeChat returned and the platform
// bucket does not hold yet, if any, with a compare-and-swap: a newer one
// (by when it was issued) stays, and an authorizer that withdrew meanwhile
// stays withdrawn. Only then does the credential use it. The write goes on
// when the lease is lost: any replica may make it, and WeChat may already
// have ended the token before it.
func (r *Refresher) saveRefresh(t *term, a *credential) error {
	if a.auth == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.work), bucket.Timeout)
	defer cancel()
	return r.storeRefresh(ctx, a)
}

// flushRefresh stores, at the end of a term, the refresh tokens WeChat
// returned that are not stored yet: a lost lease or a shutdown must not
// leave one only in memory.
func (r *Refresher) flushRefresh() {
	for _, a := range r.credentialList() {
		if a.auth == nil {
			continue
		}
		a.mu.Lock()
		unsaved := a.auth.unsaved != nil
		a.mu.Unlock()
		if !unsaved {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
		if err := r.storeRefresh(ctx, a); err != nil {
			r.log.Error("a refresh token WeChat returned could not be stored; it is held in memory", "authorizer", a.key, "error", err)
		}
		cancel()
	}
}

func (r *Refresher) storeRefresh(ctx context.Context, a *credential) error {
	a.mu.Lock()
	unsaved, component := a.auth.unsaved, a.auth.component
	a.mu.Unlock()
	if unsaved == nil {
		return nil
	}
	b := r.platformBucket.Load()
	if b == nil {
		return errors.New("publisher: the platform bucket is not open")
	}
	rec, rev, _, err := kv.UpdateAuthorizer(ctx, *b, component, a.key, func(held kv.Authorizer, _ bool) (kv.Authorizer, bool) {
		if held.Unauthorized {
			return held, false // withdrawn meanwhile: it stays so
		}
		return held.WithRefreshToken(unsaved.RefreshToken, unsaved.IssuedAt, unsaved.Code)
	})
	if err != nil {
		return fmt.Errorf("publisher: the refresh token WeChat returned for %s is not stored yet: %w", a.key, err)
	}
	a.mu.Lock()
	if a.auth.unsaved == unsaved {
		a.auth.unsaved = nil
	}
	if rev > a.auth.rev {
		a.auth.rev, a.auth.record = rev, rec
		a.secret = NewSecret(rec.RefreshToken)
	}
	a.mu.Unlock()
	return nil
}

// spendCode drops an authorization code WeChat said is spent from the
// authorizer's record, so that it is not tried again; an authorizer left
// without a refresh token stops being refreshed.
func (r *Refresher) spendCode(t *term, a *credential, code string) {
	b := r.platformBucket.Load()
	if b == nil || a.auth == nil {
		return
	}
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	_, _, _, err := kv.UpdateAuthorizer(ctx, *b, a.auth.component, a.key, func(held kv.Authorizer, found bool) (kv.Authorizer, bool) {
		if !found || held.Code != code {
			return held, false
		}
		held.Code, held.CodeExpiresAt = "", time.Time{}
		return held, true
	})
	if err != nil {
		r.log.Warn("cannot drop the spent authorization code; it will be tried again", "authorizer", a.key, "error", err)
	}
}

// grantFor fills in what a platform's or an authorizer's fetch needs
// beyond the secret: the newest verify ticket, or a code to exchange.
func (r *Refresher) grantFor(a *credential, src source, g *grant) {
	switch src.(type) {
	case componentSource:
		if ticket, ok := r.platforms.ticket(a.key); ok {
			g.ticket = ticket.Ticket
		}
	case authorizerSource:
		a.mu.Lock()
		if rec := a.auth.record; rec.Code != "" && r.cfg.Clock.now().Before(rec.CodeExpiresAt) {
			g.code = rec.Code
		}
		a.mu.Unlock()
	}
}

// startPush asks WeChat to push a verify ticket again, after a component
// token fetch found none that works. The fetch's failure (an ERROR line
// and a failure event) says why; this says what was done.
func (r *Refresher) startPush(t *term, a *credential, secret Secret) {
	if err := r.pacer.Wait(t.ctx); err != nil {
		return
	}
	body, _ := json.Marshal(map[string]string{"component_appid": a.key, "component_secret": secret.Reveal()})
	clock := time.Now()
	status, answer, err := r.wechat.Do(t.work, http.MethodPost, "cgi-bin/component/api_start_push_ticket", nil, body, secret.Reveal())
	if err == nil {
		var ok struct{}
		err = upstream.DecodeJSON(status, answer, upstream.ComponentCodes, &ok)
	}
	result := "ok"
	if err != nil {
		result = string(upstream.ClassOf(err))
		r.log.Warn("cannot restart the verify ticket push", "component_appid", a.key, "error", upstream.ScrubErrMsg(err, secret.Reveal()))
	} else {
		r.log.Info("asked WeChat to push the verify ticket again", "component_appid", a.key)
	}
	r.metrics.upstreamCall(a.key, "start_push_ticket", result, time.Since(clock))
}

// dropRevoked removes from the token bucket the tokens of authorizers that
// withdrew, on the leader. An appid that is a credential again (authorized
// anew) keeps its token.
func (r *Refresher) dropRevoked(t *term) {
	r.platforms.mu.Lock()
	revoked := slices.Collect(maps.Keys(r.platforms.revoked))
	r.platforms.mu.Unlock()
	if len(revoked) == 0 {
		return
	}
	for _, appid := range revoked {
		if r.dropToken(t, appid) {
			r.platforms.mu.Lock()
			delete(r.platforms.revoked, appid)
			r.platforms.mu.Unlock()
		}
	}
}

// dropToken removes the token of an authorizer that withdrew, unless it is
// a credential again (authorized anew), and announces the removal. It
// reports whether the key holds no token of it any more.
func (r *Refresher) dropToken(t *term, appid string) bool {
	if r.credential(appid) != nil {
		return true
	}
	ctx, cancel := context.WithTimeout(t.work, bucket.Timeout)
	defer cancel()
	e, err := t.bucket.Get(ctx, appid)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return true
	case err != nil:
		return false // the next term tries again
	}
	rev, err := kv.Remove(ctx, r.js, t.bucket.Bucket(), appid, e.Revision(), kv.RemovedUnauthorized)
	if err != nil {
		return false
	}
	r.announceRemoval(appid, rev, kv.RemovedUnauthorized)
	r.log.Info("authorizer withdrew its authorization: its token is removed", "authorizer", appid, "revision", rev)
	return true
}

// announceRemoval tells the subscribers of key's values, then whoever
// follows the events, that it was removed at revision rev: they stop using
// the token they hold.
func (r *Refresher) announceRemoval(key string, rev uint64, reason string) {
	if err := r.nc.PublishMsg(kv.RemovalMsg(r.subjects, key, rev, reason)); err != nil {
		r.log.Warn("removal not published to the subscribers", "key", key, "error", err)
	}
	r.nc.FlushTimeout(valueFlushWait)
	appid, kind := kv.SplitKey(key)
	ev, _ := json.Marshal(kv.RemovalEvent{AppID: appid, Kind: kind, Revision: rev, Reason: reason, RemovedAt: r.cfg.Clock.now().UTC()})
	if err := r.nc.Publish(r.subjects.Removed(key), ev); err != nil {
		r.log.Warn("removal event not published", "key", key, "error", err)
	}
}

// Callback returns the handler of the platforms' authorization-event URL,
// for any replica: the pushes it takes in are stored in the platform
// bucket, where the leader finds them. It answers 503 until the bucket is
// open, to a push and to a GET, a load balancer's health check.
func (r *Refresher) Callback() http.Handler {
	return &platform.Callback{
		Ready: func() error {
			if r.platformBucket.Load() == nil {
				return errors.New("the platform bucket is not open yet (the refresher is starting, or cannot reach NATS)")
			}
			return nil
		},
		Crypter: func(component string) *wxcrypt.Crypter {
			m := r.crypters.Load()
			if m == nil {
				return nil
			}
			return (*m)[component]
		},
		OnEvent: r.takeEvent,
		Replays: r.replays,
		Logger:  r.log,
		Now:     r.cfg.Clock.now,
	}
}

// setCrypters makes the crypters of the platforms among apps.
func (r *Refresher) setCrypters(apps []App) error {
	m := map[string]*wxcrypt.Crypter{}
	for _, app := range apps {
		if !app.platform() {
			continue
		}
		c, err := app.Platform.crypter(app.AppID)
		if err != nil {
			return fmt.Errorf("platform %s: %w", app.AppID, err)
		}
		m[app.AppID] = c
	}
	r.crypters.Store(&m)
	return nil
}

// errNoPlatformBucket answers a push that came before the bucket opened.
var errNoPlatformBucket = errors.New("publisher: the platform bucket is not open yet")

// takeEvent stores a push: a verify ticket if it is the newest, an
// authorization event if it is newer than the record's last. Pushed again,
// to this replica or another, it changes nothing.
func (r *Refresher) takeEvent(ctx context.Context, ev platform.Event) error {
	b := r.platformBucket.Load()
	if b == nil {
		return errNoPlatformBucket
	}
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	now := r.cfg.Clock.now()
	switch ev.InfoType {
	case platform.InfoVerifyTicket:
		_, err := kv.StoreNewerTicket(ctx, *b, kv.VerifyTicket{ComponentAppID: ev.ComponentAppID, Ticket: ev.Ticket,
			CreateTime: ev.CreateTime, ReceivedAt: now})
		return err
	case platform.InfoAuthorized, platform.InfoUpdateAuthorized, platform.InfoUnauthorized:
	default:
		r.log.Info("push of a kind wxtoken does not use; answered", "component_appid", ev.ComponentAppID, "info_type", ev.InfoType)
		return nil
	}
	if kv.ValidateID(ev.Authorizer) != nil {
		r.log.Warn("authorization event with an authorizer appid that is not one; answered, not kept", "component_appid", ev.ComponentAppID)
		return nil
	}
	_, _, wrote, err := kv.UpdateAuthorizer(ctx, *b, ev.ComponentAppID, ev.Authorizer, func(held kv.Authorizer, _ bool) (kv.Authorizer, bool) {
		if ev.InfoType == platform.InfoUnauthorized {
			return held.Withdrawn(ev.CreateTime)
		}
		return held.Authorized(ev.CreateTime, ev.Code, ev.CodeExpiresAt)
	})
	if err == nil && wrote {
		r.log.Info("authorization event taken in", "component_appid", ev.ComponentAppID, "authorizer", ev.Authorizer, "info_type", ev.InfoType)
	}
	return err
}

// openPlatformBucket creates or opens the platform bucket: replicas as the
// token bucket's, history kept, and no MaxAge, for a refresh token lives as
// long as its authorization.
func (r *Refresher) openPlatformBucket(ctx context.Context) (jetstream.KeyValue, error) {
	b, err := r.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      r.cfg.PlatformBucket,
		Description: "wxtoken: third-party platforms' verify tickets and authorizers' refresh tokens (refresher only)",
		History:     uint8(max(platformHistory, r.cfg.History)),
		Replicas:    r.cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: platform bucket %s: %w", r.cfg.PlatformBucket, err)
	}
	return b, nil
}

// followPlatforms follows the platform bucket, if there is one, until ctx
// ends, and returns once it has delivered what the bucket held; false if
// ctx ended first. done closes when the follower has stopped.
func (r *Refresher) followPlatforms(ctx context.Context, done chan<- struct{}) bool {
	b := r.platformBucket.Load()
	if b == nil {
		close(done)
		return true
	}
	synced := make(chan struct{})
	var once sync.Once
	follower := &kvwatch.Follower{
		Bucket:  *b,
		Key:     ">",
		Conn:    r.nc,
		OnEntry: r.observePlatform,
		OnSynced: func() {
			r.platformsSynced()
			once.Do(func() { close(synced) })
		},
		OnError: func(err error) { r.log.Warn("platform bucket watch interrupted, resuming", "error", err) },
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
