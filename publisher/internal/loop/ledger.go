package loop

import (
	"context"
	"encoding/json"
	"fmt"
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
// tells whose doing that was (judgeDeath).

// count counts the call under api of cr in its app's ledger. A call that
// ends the token held is not made uncounted: the token it ends would look
// ended by another party. Any other is made, with a warning.
func (c *Credentials) count(t *term, cr *credential, api string) error {
	appid, _ := kv.SplitKey(cr.key)
	ender := cr.id().ender
	ends := ender != nil && ender.Ends(api)
	err := c.countIn(t.work, t.bucket, appid, api, ends)
	switch {
	case err == nil:
		return nil
	case t.work.Err() != nil:
		return ErrEnding
	case ends:
		return fmt.Errorf("%w; a call that ends the token held is not made uncounted", err)
	}
	c.log.Warn("call to WeChat made without counting it in the ledger", "key", cr.key, "api", api, "error", err)
	return nil
}

// judgeDeath is told that WeChat says held, stored at revision rev, is
// dead while it should be valid. If the ledger shows no call of the
// refresher's since its fetch that could have ended it, another party
// holding the app's secret did: that is said loudly (an ERROR line, a
// failure event, a metric, and the ledger, which `wxtoken status` shows).
// A token fetched before the ledger began, or one the refresher ended
// itself (a rotation, one a replica fetched but never stored, an older
// token restored) says nothing. The rotation goes on whatever is found.
func (c *Credentials) judgeDeath(t *term, cr *credential, id *identity, rev uint64, held kv.Credential) {
	if id.ender == nil {
		return // nobody else's call ends this kind's values
	}
	appid, _ := kv.SplitKey(cr.key)
	l, ok, err := c.ledger.Read(t.work, t.bucket, appid)
	switch {
	case err != nil:
		c.log.Warn("cannot tell who ended the token: the ledger cannot be read", "appid", cr.key, "error", err)
		return
	case !ok || l.Ours(held.FetchedAt):
		return
	}
	now := c.now()
	dead := kv.Elsewhere{At: now.UTC(), Revision: rev, FetchedAt: held.FetchedAt.UTC(), ExpiresAt: held.ExpiresAt.UTC(),
		BeforeExpirySeconds: int64(held.ExpiresAt.Sub(now) / time.Second)}
	c.log.Error("token ended by another party holding the AppSecret: WeChat says it is dead before its expiry, and wxtoken made no call since its fetch that could end it. "+
		"Another system fetches this app's tokens with its AppSecret (a second token server, a cron job, an SDK given the secret, an old deployment): "+
		"find it and make it read tokens from wxtoken instead, or reset the AppSecret. WeChat's console shows every API call's source IP for 7 days (调用日志查询). Rotating now.",
		"appid", cr.key, "revision", rev, "fetched_at", dead.FetchedAt.Format(time.RFC3339), "expires_at", dead.ExpiresAt.Format(time.RFC3339),
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
	b := c.bucket.Load()
	if b == nil {
		c.apart.keep(appid, map[string]int{api: 1})
		return nil
	}
	return c.countIn(ctx, *b, appid, api, false)
}

// countIn counts the call under api in appid's ledger in b, with the
// calls kept for it while there was no bucket (kept again if the count
// fails).
func (c *Credentials) countIn(ctx context.Context, b jetstream.KeyValue, appid, api string, ends bool) error {
	kept := c.apart.take(appid)
	now := c.now()
	err := c.ledger.Update(ctx, b, appid, func(l *kv.Ledger) bool {
		for api, n := range kept {
			for range n {
				l.Count(api, now, false)
			}
		}
		l.Count(api, now, ends)
		return true
	})
	if err != nil {
		c.apart.keep(appid, kept)
	}
	return err
}

// uncounted is the calls made before there was a ledger to count them in,
// by appid and API.
type uncounted struct {
	mu    sync.Mutex
	calls map[string]map[string]int
}

func (u *uncounted) keep(appid string, calls map[string]int) {
	if len(calls) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls == nil {
		u.calls = map[string]map[string]int{}
	}
	if u.calls[appid] == nil {
		u.calls[appid] = map[string]int{}
	}
	for api, n := range calls {
		u.calls[appid][api] += n
	}
}

func (u *uncounted) take(appid string) map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	calls := u.calls[appid]
	delete(u.calls, appid)
	return calls
}
