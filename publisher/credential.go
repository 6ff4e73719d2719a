package publisher

import (
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// credential is one key of the token bucket that the refresher keeps
// fresh: an app's access_token, or a ticket fetched with it. It owns
// everything the refresher knows of that key; the loop (rotate.go) is the
// same for every kind, and what differs is its source.
type credential struct {
	key    string      // its key in the token bucket: the appid, or "<appid>.<kind>"
	kind   string      // kv.KindToken, or the ticket's kind
	parent *credential // the token a ticket is fetched with; nil for a token

	mu         sync.Mutex
	secret     Secret         // a token's; none for a ticket
	src        source         // how it is fetched
	removed    bool           // by a reload: no longer refreshed
	rev        uint64         // newest revision of the key seen; 0 when there is none
	rec        *kv.Credential // the token at rev; nil when absent, deleted or undecodable
	refreshAt  time.Time      // when rec enters its refresh window, spread included
	flight     *flight        // the rotation under way, shared by all who need one
	lastForced time.Time      // start of the last forced refresh
	failures   int            // consecutive failed rotations (fetch or write)
	retryAt    time.Time      // no fetch before this, after a failure
	lastErr    error          // the failure that set retryAt
	pending    *kv.Credential // fetched but not stored yet: written before anything is fetched
	announced  uint64         // the newest revision this replica published on the Value subject
	timer      *time.Timer    // wakes the app when it falls due
	timerAt    time.Time
	timerGen   uint64           // tells a stopped timer's late callback from the current one's
	quietUntil time.Time        // WeChat answered with the token held: not asked again before this
	auth       *authorizerState // an authorizer's, fixed at creation; nil for other credentials
}

// due is when the app next needs a fetch. Callers hold a.mu.
func (a *credential) due(now time.Time) time.Time {
	switch {
	case now.Before(a.retryAt):
		return a.retryAt
	case a.pending != nil:
		// A token fetched but not stored must reach the bucket: its fetch
		// will kill the one there.
		return now
	case a.auth != nil && (a.auth.unsaved != nil || a.auth.record.Code != "" && now.Before(a.auth.record.CodeExpiresAt)):
		// A refresh token to store, or an authorization code to exchange
		// before it expires.
		return now
	case a.rec == nil || !a.rec.ValidAt(now):
		return maxTime(now, a.quietUntil)
	}
	return maxTime(a.refreshAt, a.quietUntil)
}

// pendingSuperseded reports whether the bucket holds a newer token than the
// one fetched but not stored (another leader's, while this replica could
// not write): WeChat has ended the older one, or will, so it must not be
// stored. Callers hold a.mu.
func (a *credential) pendingSuperseded() bool {
	return a.pending != nil && a.rec != nil && a.rec.FetchedAt.After(a.pending.FetchedAt)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// validRecord returns the app's token if it has one that has not expired.
// Callers hold a.mu.
func (a *credential) validRecord(now time.Time) *kv.Credential {
	if a.rec != nil && a.rec.ValidAt(now) {
		return a.rec
	}
	return nil
}

// setRecord records the token at rev. Callers hold a.mu.
func (r *Refresher) setRecord(a *credential, rev uint64, rec *kv.Credential) {
	if rec == nil || a.rec == nil || rec.Value != a.rec.Value {
		a.quietUntil = time.Time{} // a new value: WeChat's repeats of the old one are over
	}
	a.rev, a.rec = rev, rec
	if rec != nil {
		window := r.window(a.src, rec.Lifetime())
		a.refreshAt = rec.ExpiresAt.Add(-window - spreadOf(a.key, rev, window/5))
	}
}

// credentialSet is the credentials the refresher keeps fresh. It is
// immutable: SetApps replaces it whole, so that readers need no lock.
type credentialSet struct {
	byKey    map[string]*credential
	order    []*credential                 // configuration order, each token before its tickets
	children map[*credential][]*credential // what is fetched with each token: its tickets, a platform's authorizers
}

func (r *Refresher) credential(key string) *credential { return r.apps.Load().byKey[key] }

func (r *Refresher) credentialList() []*credential { return r.apps.Load().order }

// newCredentialSet returns the credentials apps and the authorizers of
// their platforms describe. Those old holds are kept, with their state,
// and given the apps' secrets and APIs; the others are new.
func newCredentialSet(apps []App, authorizers map[string]authorizerEntry, old *credentialSet, log func(string, ...any)) *credentialSet {
	set := &credentialSet{byKey: make(map[string]*credential, len(apps))}
	add := func(c *credential) {
		set.byKey[c.key] = c
		set.order = append(set.order, c)
	}
	for _, app := range apps {
		token := old.find(app.Key())
		if token == nil || token.auth != nil || token.parent != nil {
			token = &credential{key: app.Key(), kind: kv.KindToken, secret: app.Secret, src: sourceOf(app)}
		}
		add(token)
		for _, t := range app.Tickets {
			key := kv.Key(app.Key(), t.kind())
			ticket := old.find(key)
			if ticket == nil || ticket.parent != token {
				ticket = &credential{key: key, kind: t.kind(), parent: token, src: ticketSourceOf(app, t)}
			}
			add(ticket)
		}
	}
	authorizerCredentials(set, authorizers, old, log)
	set.children = map[*credential][]*credential{}
	for _, c := range set.order {
		if c.parent != nil {
			set.children[c.parent] = append(set.children[c.parent], c)
		}
	}
	return set
}

// find returns the credential of key, if s holds it; s may be nil.
func (s *credentialSet) find(key string) *credential {
	if s == nil {
		return nil
	}
	return s.byKey[key]
}
