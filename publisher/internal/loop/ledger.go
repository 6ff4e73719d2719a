package loop

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// The refresher's calls to WeChat are counted in each app's ledger in the
// token bucket before they are made (callUpstream, Attempt.Do), under the
// name the metrics give them; a call that ends the app's token held (the
// source says which: Ender) is recorded as the last such. When WeChat then
// says a token the refresher stored is dead before its expiry, the ledger
// tells whose doing that was (suspect, blame).

// count counts the call under api of cr, made at at, in its app's ledger.
// A call is made even if it cannot be counted (the bucket may be gone, and
// the rotation repairs it when it stores): it is kept, and counted with
// the app's next count, with its time, so that a token it ends is not
// blamed on another party.
func (c *Credentials) count(t *term, cr *credential, api string, at time.Time) error {
	appid, _ := kv.SplitKey(cr.key)
	ender := cr.id().ender
	ends := ender != nil && ender.Ends(api)
	err := c.countIn(t.work, t.bucket, appid, call{api: api, at: at, ends: ends})
	switch {
	case err == nil:
		return nil
	case t.work.Err() != nil:
		return ErrEnding
	}
	c.log.Warn("call to WeChat made before it is counted in the ledger; it is counted with the next", "key", cr.key, "api", api, "error", err)
	return nil
}

// suspect is told that WeChat says held, stored at revision rev, is dead
// while it should be valid, before the refresher fetches its successor.
// If the ledger shows no call of the refresher's since its fetch that
// could have ended it, it returns the record of the death, to be blamed
// on another party once the fetch shows that WeChat holds another token
// (blame): a token WeChat ended with nobody fetching (one revoked, which
// stable_token keeps returning) is no other party's fetch. A token fetched
// before the ledger began, or one the refresher ended itself (a rotation,
// one a replica fetched but never stored, an older token restored), is
// not suspect.
func (c *Credentials) suspect(t *term, cr *credential, id *identity, rev uint64, held kv.Credential) *kv.Elsewhere {
	if id.ender == nil {
		return nil // nobody else's call ends this kind's values
	}
	appid, _ := kv.SplitKey(cr.key)
	l, ok, err := c.ledger.Read(t.work, t.bucket, appid)
	switch {
	case err != nil:
		c.log.Warn("cannot tell who ended the token: the ledger cannot be read", "appid", cr.key, "error", err)
		return nil
	case !ok || l.Ours(held.FetchedAt):
		return nil
	}
	now := c.now()
	return &kv.Elsewhere{At: now.UTC(), Revision: rev, FetchedAt: held.FetchedAt.UTC(), ExpiresAt: held.ExpiresAt.UTC(),
		BeforeExpirySeconds: int64(held.ExpiresAt.Sub(now) / time.Second)}
}

// blame says loudly that another party holding the app's secret ended a
// token: an ERROR line saying what to do, a failure event, a metric, and
// the ledger, which `wxtoken status` shows. The rotation goes on.
func (c *Credentials) blame(t *term, cr *credential, dead kv.Elsewhere) {
	appid, _ := kv.SplitKey(cr.key)
	c.log.Error("token ended by another party holding the AppSecret: WeChat says it is dead before its expiry, and wxtoken made no call since its fetch that could end it. "+
		"Another system fetches this app's tokens with its AppSecret (a second token server, a cron job, an SDK given the secret, an old deployment): "+
		"find it and make it read tokens from wxtoken instead, or reset the AppSecret. WeChat's console shows every API call's source IP for 7 days (调用日志查询). Rotating now.",
		"appid", cr.key, "revision", dead.Revision, "fetched_at", dead.FetchedAt.Format(time.RFC3339), "expires_at", dead.ExpiresAt.Format(time.RFC3339),
		"before_expiry", (time.Duration(dead.BeforeExpirySeconds) * time.Second).String())
	c.metrics.InvalidatedElsewhere(cr.key)
	c.publishElsewhere(cr.key, dead)
	if err := c.ledger.Update(t.work, t.bucket, appid, func(l *kv.Ledger) bool {
		if l.Day == "" {
			return false // a ledger gone meanwhile: nothing to add to
		}
		if l.Elsewhere != nil {
			dead.Count = l.Elsewhere.Count
		}
		dead.Count++
		l.Elsewhere = &dead
		return true
	}); err != nil {
		c.log.Warn("the token ended by another party is not recorded in the ledger", "appid", cr.key, "error", err)
	}
}

// publishElsewhere publishes the failure event of a token another party
// ended. The rotation it causes goes at once: next_attempt is now.
func (c *Credentials) publishElsewhere(key string, dead kv.Elsewhere) {
	appid, kind := kv.SplitKey(key)
	data, _ := json.Marshal(kv.FailureEvent{AppID: appid, Kind: kind, Class: kv.ClassInvalidatedElsewhere,
		ErrMsg: "the token was ended before its expiry by another party holding the AppSecret", NextAttempt: dead.At,
		At: dead.At, Revision: dead.Revision, ExpiresAt: dead.ExpiresAt, BeforeExpirySeconds: dead.BeforeExpirySeconds})
	if err := c.cfg.Conn.Publish(c.subjects.Failed(key), data); err != nil {
		c.log.Warn("failure event not published", "key", key, "error", err)
	}
}

// CountApart counts in appid's ledger a call to WeChat made apart from the
// loop (a replica's probe of a secret), under api, before it is made: it
// ends no token, and counts at WeChat as any other. Before the token
// bucket is open (a replica's first probes) the call is kept, and counted
// with the app's next count.
func (c *Credentials) CountApart(ctx context.Context, appid, api string) error {
	made := call{api: api, at: c.now()}
	b := c.bucket.Load()
	if b == nil {
		c.uncounted.keep(appid, made)
		return nil
	}
	return c.countIn(ctx, *b, appid, made)
}

// call is one call to WeChat to count.
type call struct {
	api  string
	at   time.Time
	ends bool // it ends the app's token held
}

// countIn counts made in appid's ledger in b, after the calls kept for the
// app that could not be counted before; if it fails, made is kept too.
func (c *Credentials) countIn(ctx context.Context, b jetstream.KeyValue, appid string, made call) error {
	return c.countCalls(ctx, b, appid, append(c.uncounted.take(appid), made))
}

// countKept counts in b the calls kept for every app, made before b was
// open (a replica's first probes), at once rather than with each app's
// next count, which may be a probe an hour away: until they are counted,
// the leader's reading of WeChat's count (quota/get) would take them for
// another party's. What cannot be counted stays kept.
func (c *Credentials) countKept(ctx context.Context, b jetstream.KeyValue) {
	for _, appid := range c.uncounted.apps() {
		if calls := c.uncounted.take(appid); len(calls) > 0 {
			if err := c.countCalls(ctx, b, appid, calls); err != nil {
				c.log.Warn("calls to WeChat made before the token bucket was open are not counted in the ledger yet; they are counted with the next", "appid", appid, "error", err)
			}
		}
	}
}

// countCalls counts calls in appid's ledger in b; if it fails, they are
// kept.
func (c *Credentials) countCalls(ctx context.Context, b jetstream.KeyValue, appid string, calls []call) error {
	err := c.ledger.Update(ctx, b, appid, func(l *kv.Ledger) bool {
		for _, m := range calls {
			l.Count(m.api, m.at, m.ends)
		}
		return true
	})
	if err != nil {
		c.uncounted.keep(appid, calls...)
	}
	return err
}

// uncounted is the calls made that could not be counted yet, by appid.
// It is this replica's memory: a replica that dies before it counts them
// loses them.
type uncounted struct {
	mu    sync.Mutex
	calls map[string][]call
}

// maxUncounted bounds the calls kept for one app: past it the oldest
// go (only their number in today's count is lost; the last that ends the
// token is the newest).
const maxUncounted = 1000

func (u *uncounted) keep(appid string, calls ...call) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls == nil {
		u.calls = map[string][]call{}
	}
	kept := append(u.calls[appid], calls...)
	if len(kept) > maxUncounted {
		kept = kept[len(kept)-maxUncounted:]
	}
	u.calls[appid] = kept
}

// apps returns the apps with calls kept.
func (u *uncounted) apps() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Collect(maps.Keys(u.calls))
}

func (u *uncounted) take(appid string) []call {
	u.mu.Lock()
	defer u.mu.Unlock()
	calls := u.calls[appid]
	delete(u.calls, appid)
	return calls
}
