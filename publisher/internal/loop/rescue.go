package loop

import (
	"context"
	"encoding/json"

	"github.com/wxtoken/wxtoken/kv"
)

// What an attempt gives a source that acts on a failed fetch for the
// whole app, apart from the fetch (a reset of a spent quota: see
// source/rescue.go): the value held, the ledger of the app whose quota
// its fetches spend (QuotaApp), the leader's calls counted in it, and the
// failure events and metrics that say what it did.

// Held returns the value the credential holds, if it is still valid.
func (a *Attempt) Held() (kv.Credential, bool) {
	rec := a.cr.valid(a.c.now())
	if rec == nil {
		return kv.Credential{}, false
	}
	return *rec, true
}

// QuotaApp is the app whose daily quota at WeChat the credential's
// fetches spend, whose ledger holds the rescue's resets and budgets: the
// credential's own, or its parent's when it is fetched with another app's
// token (an authorizer's, with its platform's component token, counts at
// WeChat against the platform).
func (a *Attempt) QuotaApp() string {
	key := a.Key
	if a.cr.parent != nil {
		key = a.cr.parent.key
	}
	appid, _ := kv.SplitKey(key)
	return appid
}

// LeaderCall makes a call for QuotaApp that fetches no value, as
// Credentials.LeaderCall does, bounded by the attempt's context.
func (a *Attempt) LeaderCall(api string, allow func(kv.Ledger) error, call func(context.Context) error) error {
	return a.c.LeaderCall(a.t.work, a.QuotaApp(), api, allow, call)
}

// Ledger returns QuotaApp's ledger as the bucket holds it now; ok is false
// when it holds none.
func (a *Attempt) Ledger() (l kv.Ledger, ok bool, err error) {
	return a.c.ledger.Read(a.t.work, a.t.bucket, a.QuotaApp())
}

// UpdateLedger changes QuotaApp's ledger with compare-and-swap, as the
// loop's counts do: change returns false to write nothing.
func (a *Attempt) UpdateLedger(change func(*kv.Ledger) bool) error {
	return a.c.ledger.Update(a.t.work, a.t.bucket, a.QuotaApp(), change)
}

// Publish publishes ev on the credential's failed subject, with its appid
// and kind.
func (a *Attempt) Publish(ev kv.FailureEvent) {
	ev.AppID, ev.Kind = kv.SplitKey(a.Key)
	ev.NextAttempt = ev.NextAttempt.UTC()
	data, _ := json.Marshal(ev)
	if err := a.c.cfg.Conn.Publish(a.c.subjects.Failed(a.Key), data); err != nil {
		a.c.log.Warn("failure event not published", "key", a.Key, "error", err)
	}
}

// Metrics is the refresher's metrics.
func (a *Attempt) Metrics() Metrics { return a.c.metrics }
