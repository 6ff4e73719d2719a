package platform

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Authorizer is what the refresher knows of an account that authorized one
// of its platforms: the newest record of it the platform bucket holds (its
// refresh token, a code to exchange), and a refresh token WeChat returned
// that the bucket does not hold yet. A refresh token is the one thing the
// platform cannot fetch again: each WeChat returns is stored before
// anything else is asked of WeChat with it, and before the token it came
// with is stored.
type Authorizer struct {
	Component string // the platform's component appid
	AppID     string // the authorizer's

	p  *Platforms
	mu sync.Mutex
	// rev and record are the newest record seen or written.
	rev    uint64
	record kv.Authorizer
	// unsaved is a refresh token WeChat returned that the bucket does not
	// hold yet; its Code is the authorization code the call spent.
	unsaved *kv.Authorizer
	// withdrawn: the account withdrew its authorization.
	withdrawn bool
}

func (a *Authorizer) revision() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rev
}

// take takes in revision rev of the record, the refresh token another
// leader stored or a code to exchange, if it is newer than the one known;
// a refresh token held but not stored stays if it was issued later.
func (a *Authorizer) take(rev uint64, rec kv.Authorizer) {
	a.mu.Lock()
	newer := rev > a.rev
	if newer {
		a.rev, a.record = rev, rec
		if u := a.unsaved; u != nil && !u.IssuedAt.After(rec.IssuedAt) {
			a.unsaved = nil
		}
	}
	a.mu.Unlock()
	if newer {
		a.p.call1(a.p.cfg.OnRecord, a.AppID)
	}
}

func (a *Authorizer) withdraw() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.withdrawn = true
}

// Withdrawn reports whether the account withdrew its authorization.
func (a *Authorizer) Withdrawn() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.withdrawn
}

// Grant is what a fetch of the authorizer's token is made with: the
// refresh token the bucket holds, and an authorization code not yet
// exchanged, if one is still usable at now.
func (a *Authorizer) Grant(now time.Time) (refresh upstream.Secret, code string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.record.Code != "" && now.Before(a.record.CodeExpiresAt) {
		code = a.record.Code
	}
	return upstream.NewSecret(a.record.RefreshToken), code
}

// Read reads the record before a fetch, and takes it in if it is newer
// than the one the follower gave: the refresh token another leader stored
// may not have reached this one's follower yet, and asking with an older
// one would end the newest. A failed read leaves the record known: the
// fetch goes on with it.
func (a *Authorizer) Read(ctx context.Context) {
	b := a.p.bucket.Load()
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	e, err := (*b).Get(ctx, kv.AuthorizerKey(a.Component, a.AppID))
	if err != nil {
		return
	}
	if rec, err := kv.DecodeAuthorizer(e.Key(), e.Value()); err == nil && rec.Active() {
		a.take(e.Revision(), rec)
	}
}

// Hold keeps the refresh token a fetch returned, issued at issuedAt, until
// Save stores it. code is the authorization code the fetch spent, if any.
func (a *Authorizer) Hold(refresh upstream.Secret, issuedAt time.Time, code string) {
	if refresh.IsZero() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unsaved = &kv.Authorizer{RefreshToken: refresh.Reveal(), IssuedAt: issuedAt, Code: code}
}

// Unsaved reports whether a refresh token WeChat returned is not stored
// yet.
func (a *Authorizer) Unsaved() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.unsaved != nil
}

// Save stores the refresh token WeChat returned and the platform bucket
// does not hold yet, if any, with a compare-and-swap: a newer one (by when
// it was issued) stays, and an authorizer that withdrew meanwhile stays
// withdrawn. Only then does a fetch use it.
func (a *Authorizer) Save(ctx context.Context) error {
	a.mu.Lock()
	unsaved := a.unsaved
	a.mu.Unlock()
	if unsaved == nil {
		return nil
	}
	b := a.p.bucket.Load()
	if b == nil {
		return errors.New("publisher: the platform bucket is not open")
	}
	rec, rev, _, err := kv.UpdateAuthorizer(ctx, *b, a.Component, a.AppID, func(held kv.Authorizer, _ bool) (kv.Authorizer, bool) {
		if held.Unauthorized {
			return held, false // withdrawn meanwhile: it stays so
		}
		return held.WithRefreshToken(unsaved.RefreshToken, unsaved.IssuedAt, unsaved.Code)
	})
	if err != nil {
		return fmt.Errorf("publisher: the refresh token WeChat returned for %s is not stored yet: %w", a.AppID, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.unsaved == unsaved {
		a.unsaved = nil
	}
	if rev > a.rev {
		a.rev, a.record = rev, rec
	}
	return nil
}

// SpendCode drops an authorization code WeChat said is spent from the
// record, so that it is not tried again; an authorizer left without a
// refresh token stops being refreshed.
func (a *Authorizer) SpendCode(ctx context.Context, code string) {
	b := a.p.bucket.Load()
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	_, _, _, err := kv.UpdateAuthorizer(ctx, *b, a.Component, a.AppID, func(held kv.Authorizer, found bool) (kv.Authorizer, bool) {
		if !found || held.Code != code {
			return held, false
		}
		held.Code, held.CodeExpiresAt = "", time.Time{}
		return held, true
	})
	if err != nil {
		a.p.cfg.Logger.Warn("cannot drop the spent authorization code; it will be tried again", "authorizer", a.AppID, "error", err)
	}
}

// Flush stores, at the end of a term, the refresh tokens WeChat returned
// that are not stored yet: a lost lease or a shutdown must not leave one
// only in memory.
func (p *Platforms) Flush() {
	p.mu.Lock()
	var unsaved []*Authorizer
	for _, a := range p.authorizers {
		unsaved = append(unsaved, a)
	}
	p.mu.Unlock()
	for _, a := range unsaved {
		if !a.Unsaved() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), bucket.Timeout)
		if err := a.Save(ctx); err != nil {
			p.cfg.Logger.Error("a refresh token WeChat returned could not be stored; it is held in memory", "authorizer", a.AppID, "error", err)
		}
		cancel()
	}
}
