package publisher

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

// Version is reported by the refresh service to `nats micro info`.
const Version = "0.1.0"

// maxPendingRequests bounds the refresh requests handled at once; past it
// a request is answered "unavailable" at once instead of queueing.
const maxPendingRequests = 10000

// serve adds the refresh endpoint, as a micro service so that `nats micro ls`
// shows it, for the length of a term.
func (r *Refresher) serve(t *term) (micro.Service, error) {
	svc, err := micro.AddService(r.nc, micro.Config{
		Name:        kv.ServiceName,
		Version:     Version,
		Description: "WeChat access_token refresher: refresh requests for the token bucket " + r.cfg.Bucket,
		Metadata:    map[string]string{"instance": r.cfg.Instance, "bucket": r.cfg.Bucket},
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: refresh endpoint: %w", err)
	}
	prefix := r.subjects.Refresh("")
	var pending atomic.Int64
	handler := func(req micro.Request) {
		defer func() {
			if p := recover(); p != nil {
				r.logPanic(p)
				r.metrics.request(outcomeError)
				respond(req, errorReply(kv.CodeUnavailable, "internal error (logged)"))
			}
		}()
		if t.ctx.Err() != nil { // the term ended; its endpoint stops soon (see stopEndpoint)
			r.metrics.request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "the refresher is stepping down"))
			return
		}
		appid := strings.TrimPrefix(req.Subject(), prefix)
		data := bytes.Clone(req.Data()) // decided again, maybe, after the handler returned
		ad := r.admit(t, appid, data)
		if ad.f == nil {
			r.metrics.request(ad.outcome)
			respond(req, ad.reply)
			return
		}
		// The answer waits on WeChat. micro delivers requests one at a
		// time, so wait on another goroutine: one app's fetch must not
		// hold up requests for the others. micro's Request must not be
		// used once the handler returned (micro reads it for its stats),
		// so that goroutine publishes the answer to the reply subject.
		if pending.Add(1) > maxPendingRequests {
			pending.Add(-1)
			r.metrics.request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "too many refresh requests in progress"))
			return
		}
		replyTo := req.Reply()
		if !t.spawn(func() {
			defer pending.Add(-1)
			reply, outcome := r.await(t, appid, data, ad)
			r.metrics.request(outcome)
			r.publishReply(replyTo, reply)
		}) {
			pending.Add(-1)
			r.metrics.request(outcomeError)
			respond(req, errorReply(kv.CodeUnavailable, "the refresher is stepping down"))
		}
	}
	err = svc.AddEndpoint("refresh", micro.HandlerFunc(handler),
		micro.WithEndpointSubject(r.subjects.Refresh(">")), // appids, and "<appid>.<kind>"
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
func (r *Refresher) stopEndpoint(ctx context.Context, svc micro.Service) {
	bucket.AwaitConnection(ctx, r.nc)
	if err := svc.Stop(); err != nil {
		r.log.Warn("refresh endpoint did not stop cleanly", "error", err)
	}
}

// admission is how admit decided a refresh request.
type admission struct {
	a       *credential
	f       *flight // the rotation the answer waits on; nil when reply is the answer
	started bool    // this request started f
	behind  bool    // f stored the revision the request names: decide again once f lands
	reply   kv.RefreshReply
	outcome string // the metrics label of reply
}

// answer is an admission answered at once.
func answer(reply kv.RefreshReply, outcome string) admission {
	return admission{reply: reply, outcome: outcome}
}

// admit decides a refresh request as the contract says. Either it answers
// at once (f is nil), or the answer is the outcome of the rotation f, which
// it started or joined.
func (r *Refresher) admit(t *term, appid string, data []byte) admission {
	a := r.credential(appid)
	if a == nil {
		return answer(errorReply(kv.CodeUnknownApp, fmt.Sprintf("this refresher has no credential %.80q", appid)), outcomeError)
	}
	req, err := kv.DecodeRefreshRequest(data)
	if err != nil {
		return answer(errorReply(kv.CodeBadRequest, err.Error()), outcomeError)
	}
	now := r.cfg.Clock.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.removed { // by a reload a moment ago
		return answer(errorReply(kv.CodeUnknownApp, fmt.Sprintf("this refresher has no credential %.80q", appid)), outcomeError)
	}
	cur, valid := a.rev, a.validRecord(now)
	var f *flight
	started := false
	switch stale := req.StaleRevision; {
	case stale != nil && a.flight != nil && *stale > a.flight.from:
		// The rotation under way has stored the revision named stale, or
		// is storing it: services that read the bucket, or took the new
		// value in at once, can name it before the rotation lands. It
		// cannot be the rotation that replaces it.
		return admission{a: a, f: a.flight, behind: true}
	case stale != nil && *stale > cur:
		return answer(errorReply(kv.CodeBadRequest, fmt.Sprintf("stale_revision %d is newer than the current revision %d", *stale, cur)), outcomeError)
	case valid == nil && a.flight == nil && a.rec != nil && now.Before(a.quietUntil):
		// WeChat answered with the value that expired, and is not asked
		// again before quietUntil: a request must not make it sooner.
		reply := currentReply(a.key, cur, a.rec, false)
		reply.Error = &kv.ReplyError{Code: kv.CodeUpstream, Message: fmt.Sprintf(
			"WeChat still gives the value of %s that expired at %s; it is asked again at %s", a.key,
			a.rec.ExpiresAt.UTC().Format(time.RFC3339), a.quietUntil.UTC().Format(time.RFC3339))}
		return answer(reply, outcomeError)
	case valid == nil:
		// No valid token at all: fetch one, whatever the request named.
		f, started = r.startOrJoin(t, a, modeScheduled, kv.ReasonRequested)
	case stale == nil:
		return answer(currentReply(a.key, cur, valid, false), outcomeCurrent)
	case *stale < cur:
		return answer(currentReply(a.key, cur, valid, false), outcomeDeduped)
	case a.flight != nil:
		f = a.flight
	case !a.lastForced.IsZero() && now.Sub(a.lastForced) < r.cfg.MinForceInterval:
		reply := currentReply(a.key, cur, valid, false)
		since := now.Sub(a.lastForced)
		reply.Error = &kv.ReplyError{Code: kv.CodeRateLimited, Message: fmt.Sprintf(
			"a forced refresh of %s ran %s ago; at most one per %s", a.key, elapsed(since), r.cfg.MinForceInterval),
			RetryAfter: kv.RetryAfterSeconds(r.cfg.MinForceInterval - since)}
		return answer(reply, outcomeRateLimited)
	default:
		a.lastForced = now
		f, started = r.startOrJoin(t, a, modeForced, kv.ReasonRequested)
		r.log.Info("refresh requested", "appid", a.key, "stale_revision", *stale, "reason", req.Reason)
	}
	if f == nil {
		return answer(errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError)
	}
	return admission{a: a, f: f, started: started}
}

// await waits for the rotation the request was admitted to and answers
// with its outcome. A request that was behind is decided again, with the
// request's data, once that rotation lands.
func (r *Refresher) await(t *term, appid string, data []byte, ad admission) (kv.RefreshReply, string) {
	for {
		select {
		case <-ad.f.done:
		case <-t.ctx.Done():
			return errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError
		}
		if !ad.behind {
			break
		}
		if ad = r.admit(t, appid, data); ad.f == nil {
			return ad.reply, ad.outcome
		}
	}
	a, f, started := ad.a, ad.f, ad.started
	out := f.out
	switch {
	case errors.Is(out.err, errEnding):
		return errorReply(kv.CodeUnavailable, "the refresher is stepping down"), outcomeError
	case out.err != nil:
		reply := currentReply(a.key, out.rev, out.rec, false)
		var spent *budgetError
		if errors.As(out.err, &spent) {
			reply.Error = &kv.ReplyError{Code: kv.CodeRateLimited, Message: spent.reason, RetryAfter: kv.RetryAfterSeconds(spent.wait)}
			return reply, outcomeRateLimited
		}
		reply.Error = &kv.ReplyError{Code: kv.CodeUpstream, Message: replyMessage(out.err)}
		return reply, outcomeError
	case !started:
		return currentReply(a.key, out.rev, out.rec, out.refreshed), outcomeDeduped
	case out.refreshed:
		return currentReply(a.key, out.rev, out.rec, true), outcomeRefreshed
	}
	return currentReply(a.key, out.rev, out.rec, false), outcomeStillValid
}

// publishReply answers a request whose micro.Request can no longer be used,
// with the same body and error headers micro would have sent.
func (r *Refresher) publishReply(replyTo string, reply kv.RefreshReply) {
	if replyTo == "" {
		return // a publish, not a request: nobody waits for an answer
	}
	msg := nats.NewMsg(replyTo)
	msg.Data, _ = json.Marshal(reply)
	if reply.Error != nil {
		msg.Header.Set(micro.ErrorHeader, headerValue(reply.Error.Message))
		msg.Header.Set(micro.ErrorCodeHeader, kv.ServiceErrorCode(reply.Error.Code))
	}
	if err := r.nc.PublishMsg(msg); err != nil {
		r.log.Warn("refresh reply not sent", "error", err)
	}
}

// replyMessage is an error's text for a reply, which people read (the
// agent passes it on to its clients): without the "publisher: " that
// each error of this package starts with, however many are wrapped.
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
