package loop

import (
	"context"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// LeaderCall makes a call to WeChat for appid's account that fetches no
// credential (quota/get, rid/get, a reset of a spent quota), as the
// leader's rotations make theirs: only during a term, through the pacer
// and the lease's fence, counted in the app's ledger under api before it
// goes, and in the metrics under api with its class. allow, if not nil,
// sees the ledger in the same compare-and-swap write that counts the call:
// an error from it (a monthly budget spent) counts nothing, makes no call,
// and is returned. LeaderCall returns ErrEnding, and makes no call, when
// no term is under way, or it ends or the lease comes into doubt first.
// call's context is the term's work, bounded by ctx.
func (c *Credentials) LeaderCall(ctx context.Context, appid, api string, allow func(kv.Ledger) error, call func(context.Context) error) error {
	t := c.term.Load()
	if t == nil || t.ending() {
		return ErrEnding
	}
	if err := c.pacer.Wait(t.ctx); err != nil {
		return ErrEnding
	}
	if !t.coversCall(c.cfg.UpstreamTimeout) {
		return ErrEnding
	}
	if err := c.countAllowed(t, appid, api, allow); err != nil {
		return err
	}
	if t.ctx.Err() != nil || !t.coversCall(c.cfg.UpstreamTimeout) {
		return ErrEnding // the count's round trip outlasted the term, or the lease's certainty
	}
	work, cancel := context.WithCancel(t.work)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	clock := time.Now()
	err := call(work)
	if t.work.Err() != nil && err != nil {
		return ErrEnding
	}
	result := "ok"
	if err != nil {
		result = string(upstream.ClassOf(err))
	}
	c.metrics.UpstreamCall(appid, api, result, time.Since(clock))
	return err
}

// countAllowed counts a call of api in appid's ledger if allow lets it.
// A call that cannot be counted is made all the same, and counted with
// the next (see count), unless allow has a budget to keep: a budget that
// cannot be read is not spent.
func (c *Credentials) countAllowed(t *term, appid, api string, allow func(kv.Ledger) error) error {
	made := call{api: api, at: c.now()}
	if allow == nil {
		if err := c.countIn(t.work, t.bucket, appid, made); err != nil {
			if t.work.Err() != nil {
				return ErrEnding
			}
			c.log.Warn("call to WeChat made before it is counted in the ledger; it is counted with the next", "appid", appid, "api", api, "error", err)
		}
		return nil
	}
	var refused error
	err := c.ledger.Update(t.work, t.bucket, appid, func(l *kv.Ledger) bool {
		if refused = allow(*l); refused != nil {
			return false
		}
		l.Count(made.api, made.at, false)
		return true
	})
	switch {
	case refused != nil:
		return refused
	case err != nil && t.work.Err() != nil:
		return ErrEnding
	}
	return err
}
