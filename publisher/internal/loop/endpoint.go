package loop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// Refresh request outcomes, the values of wxtoken_refresh_requests_total's
// outcome label.
const (
	outcomeRefreshed   = "refreshed"    // this request's forced refresh rotated the token
	outcomeDeduped     = "deduped"      // answered by a rotation someone else caused
	outcomeStillValid  = "still_valid"  // WeChat said the token works: not rotated
	outcomeRateLimited = "rate_limited" // a forced refresh ran too recently
	outcomeCurrent     = "current"      // no stale revision: the current token's metadata
	outcomeError       = "error"        // bad request, unknown app, upstream failure, unavailable
)

// maxPendingRequests bounds the refresh requests handled at once; past it
// a request is answered "unavailable" at once instead of queueing.
const maxPendingRequests = 10000

// serve adds the refresh endpoint, as a micro service so that `nats micro
// ls` shows it, for the length of a term.
func (c *Credentials) serve(t *term) (micro.Service, error) {
	svc, err := micro.AddService(c.cfg.Conn, micro.Config{
		Name:        kv.ServiceName,
		Version:     c.cfg.Version,
		Description: "WeChat access_token refresher: refresh requests for the token bucket " + c.cfg.Bucket.Name,
		Metadata:    map[string]string{"instance": c.cfg.Instance, "bucket": c.cfg.Bucket.Name},
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: refresh endpoint: %w", err)
	}
	prefix := c.subjects.Refresh("")
	var pending atomic.Int64
	handler := func(req micro.Request) {
		defer func() {
			if p := recover(); p != nil {
				c.logPanic(p)
				c.metrics.Request(outcomeError)
				respond(req, errorReply(kv.CodeUnavailable, "internal error (logged)"))
			}
		}()
		if t.ctx.Err() != nil { // the term ended; its endpoint stops soon (see stopEndpoint)
			c.metrics.Request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "the refresher is stepping down"))
			return
		}
		key := strings.TrimPrefix(req.Subject(), prefix)
		data := bytes.Clone(req.Data()) // decided again, maybe, after the handler returned
		ad := c.admit(t, key, data)
		if ad.f == nil {
			c.metrics.Request(ad.outcome)
			respond(req, ad.reply)
			return
		}
		// The answer waits on WeChat. micro delivers requests one at a
		// time, so wait on another goroutine: one key's fetch must not
		// hold up requests for the others. micro's Request must not be
		// used once the handler returned (micro reads it for its stats),
		// so that goroutine publishes the answer to the reply subject.
		if pending.Add(1) > maxPendingRequests {
			pending.Add(-1)
			c.metrics.Request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "too many refresh requests in progress"))
			return
		}
		replyTo := req.Reply()
		if !t.spawn(func() {
			defer pending.Add(-1)
			reply, outcome := c.await(t, key, data, ad)
			c.metrics.Request(outcome)
			c.publishReply(replyTo, reply)
		}) {
			pending.Add(-1)
			c.metrics.Request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "the refresher is stepping down"))
		}
	}
	err = svc.AddEndpoint("refresh", micro.HandlerFunc(handler),
		micro.WithEndpointSubject(c.subjects.Refresh(">")), // appids, and "<appid>.<kind>"
		micro.WithEndpointMetadata(map[string]string{"contract": "README.md#wire-contract"}))
	if err != nil {
		svc.Stop()
		return nil, fmt.Errorf("publisher: refresh endpoint: %w", err)
	}
	return svc, nil
}

// stopEndpoint stops the refresh service of a term that ended, once the
// connection is up. micro stops a service by draining its subscriptions,
// and a drain begun while nats.go reconnects goes wrong: nats.go holds the
// UNSUB back, since it subscribes again on reconnect only what is still
// subscribed, but a draining subscription stays subscribed until a flush
// comes back, after the reconnect. So the new server gets the endpoint's
// subscription again, and the client then drops it alone: the server keeps
// a member of the queue group that nobody answers for, and sends it its
// share of the refresh requests until the connection is lost again. Until
// it stops, the ended term's endpoint answers that the refresher is
// stepping down. A refresher that stops while NATS is away stops it at
// once rather than wait: only a connection that outlives the refresher and
// reconnects keeps the orphan.
func (c *Credentials) stopEndpoint(ctx context.Context, svc micro.Service) {
	bucket.AwaitConnection(ctx, c.cfg.Conn)
	if err := svc.Stop(); err != nil {
		c.log.Warn("refresh endpoint did not stop cleanly", "error", err)
	}
}

// decision is how admit decided a refresh request: answered at once (f is
// nil), or by the outcome of the rotation f.
type decision struct {
	admission
	reply   kv.RefreshReply
	outcome string // the metrics label of reply
}

// answer is a decision answered at once.
func answer(reply kv.RefreshReply, outcome string) decision {
	return decision{reply: reply, outcome: outcome}
}

// admit decides a refresh request for key as the contract says. Either it
// answers at once (f is nil), or the answer is the outcome of the rotation
// f, which it started or joined.
func (c *Credentials) admit(t *term, key string, data []byte) decision {
	cr := c.credential(key)
	if cr == nil {
		return answer(errorReply(kv.CodeUnknownApp, fmt.Sprintf("this refresher has no credential %.80q", key)), outcomeError)
	}
	req, err := kv.DecodeRefreshRequest(data)
	if err != nil {
		return answer(errorReply(kv.CodeBadRequest, err.Error()), outcomeError)
	}
	ad := cr.admit(req.StaleRevision, c.now(), c.cfg.MinForceInterval, func(f *flight, base outcome, m mode, reason string) bool {
		return c.fly(t, cr, f, m, reason, base)
	})
	if ad.forced {
		c.log.Info("refresh requested", "appid", cr.key, "stale_revision", *req.StaleRevision, "reason", req.Reason)
	}
	if ad.f != nil {
		return decision{admission: ad}
	}
	switch ad.verdict {
	case removedVerdict:
		return answer(errorReply(kv.CodeUnknownApp, fmt.Sprintf("this refresher has no credential %.80q", key)), outcomeError)
	case futureVerdict:
		return answer(errorReply(kv.CodeBadRequest, fmt.Sprintf("stale_revision %d is newer than the current revision %d", *req.StaleRevision, ad.rev)), outcomeError)
	case repeatingVerdict:
		reply := currentReply(cr.key, ad.rev, ad.rec, false)
		reply.Error = &kv.ReplyError{Code: kv.CodeUpstream, Message: fmt.Sprintf(
			"WeChat still gives the value of %s that expired at %s; it is asked again at %s", cr.key,
			ad.rec.ExpiresAt.UTC().Format(time.RFC3339), ad.quiet.UTC().Format(time.RFC3339))}
		return answer(reply, outcomeError)
	case currentVerdict:
		return answer(currentReply(cr.key, ad.rev, ad.rec, false), outcomeCurrent)
	case olderVerdict:
		return answer(currentReply(cr.key, ad.rev, ad.rec, false), outcomeDeduped)
	case rateLimitedVerdict:
		reply := currentReply(cr.key, ad.rev, ad.rec, false)
		reply.Error = &kv.ReplyError{Code: kv.CodeRateLimited, Message: fmt.Sprintf(
			"a forced refresh of %s ran %s ago; at most one per %s", cr.key, Elapsed(ad.since), c.cfg.MinForceInterval),
			RetryAfter: kv.RetryAfterSeconds(c.cfg.MinForceInterval - ad.since)}
		return answer(reply, outcomeRateLimited)
	}
	return answer(errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError)
}

// await waits for the rotation the request was admitted to and answers
// with its outcome. A request that was behind is decided again, with the
// request's data, once that rotation lands.
func (c *Credentials) await(t *term, key string, data []byte, d decision) (kv.RefreshReply, string) {
	for {
		select {
		case <-d.f.done:
		case <-t.ctx.Done():
			return errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError
		}
		if !d.behind {
			break
		}
		if d = c.admit(t, key, data); d.f == nil {
			return d.reply, d.outcome
		}
	}
	cr, f, started := d.c, d.f, d.started
	out := f.out
	switch {
	case errors.Is(out.err, ErrEnding):
		return errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError
	case out.err != nil:
		reply := currentReply(cr.key, out.rev, out.rec, false)
		var declined *Declined
		if errors.As(out.err, &declined) && declined.Wait > 0 {
			reply.Error = &kv.ReplyError{Code: kv.CodeRateLimited, Message: declined.Reason, RetryAfter: kv.RetryAfterSeconds(declined.Wait)}
			return reply, outcomeRateLimited
		}
		reply.Error = &kv.ReplyError{Code: kv.CodeUpstream, Message: replyMessage(out.err)}
		return reply, outcomeError
	case !started:
		return currentReply(cr.key, out.rev, out.rec, out.refreshed), outcomeDeduped
	case out.refreshed:
		return currentReply(cr.key, out.rev, out.rec, true), outcomeRefreshed
	}
	return currentReply(cr.key, out.rev, out.rec, false), outcomeStillValid
}

// publishReply answers a request whose micro.Request can no longer be used,
// with the same body and error headers micro would have sent.
func (c *Credentials) publishReply(replyTo string, reply kv.RefreshReply) {
	if replyTo == "" {
		return // a publish, not a request: nobody waits for an answer
	}
	msg := nats.NewMsg(replyTo)
	msg.Data, _ = json.Marshal(reply)
	if reply.Error != nil {
		msg.Header.Set(micro.ErrorHeader, headerValue(reply.Error.Message))
		msg.Header.Set(micro.ErrorCodeHeader, kv.ServiceErrorCode(reply.Error.Code))
	}
	if err := c.cfg.Conn.PublishMsg(msg); err != nil {
		c.log.Warn("refresh reply not sent", "error", err)
	}
}

// replyMessage is an error's text for a reply, which people read (the
// agent passes it on to its clients): without the "publisher: " that
// each error of the refresher starts with, however many are wrapped.
func replyMessage(err error) string { return strings.ReplaceAll(err.Error(), "publisher: ", "") }

// currentReply names revision rev; rec may be nil when there is no valid token.
func currentReply(key string, rev uint64, rec *kv.Credential, refreshed bool) kv.RefreshReply {
	appid, kind := kv.SplitKey(key)
	reply := kv.RefreshReply{AppID: appid, Kind: kind, Refreshed: refreshed}
	if rec != nil {
		reply.Revision, reply.ExpiresAt = rev, rec.ExpiresAt
	}
	return reply
}

func errorReply(code, message string) kv.RefreshReply {
	return kv.RefreshReply{Error: &kv.ReplyError{Code: code, Message: message}}
}

func respond(req micro.Request, reply kv.RefreshReply) {
	data, _ := json.Marshal(reply)
	if reply.Error != nil {
		req.Error(kv.ServiceErrorCode(reply.Error.Code), headerValue(reply.Error.Message), data)
		return
	}
	req.Respond(data)
}

// headerValue makes text fit a NATS header: one line.
func headerValue(text string) string {
	return strings.Join(strings.Fields(text), " ")
}

// Elapsed is d as a message says it: cut, never rounded, so that "ran 5s
// ago; at most one per 5s" cannot be said of 4.6s; to a tenth of a second
// under 10s, where whole seconds would hide most of it.
func Elapsed(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Truncate(100 * time.Millisecond)
	}
	return d.Truncate(time.Second)
}
