package publisher

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// A replica answers logins only while it can: while its probes' last
// verdicts refuse none of its apps' secrets (probes.go), or while it
// leads. One that WeChat refuses from where it stands (40164, 89503, a
// wrong or frozen secret) would otherwise take its share of the queue
// group's logins and answer each with WeChat's refusal, whatever the other
// replicas could do. So it joins and leaves the queue group as its
// verdicts and its leadership change, rather than forward each request:
// NATS then gives every login to a replica that can make it. The leader
// stays in, whatever it cannot do, because by the lease rule it is among
// the best replicas (standing.go) and a lone replica leads: someone always
// answers, and a login no replica can make gets WeChat's own answer.
//
// Before its first verdict a replica answers (nothing says it cannot), and
// so does one whose probes are off. Leaving drains the subscription: a
// login already delivered to this replica is answered, not dropped.

// drainWait bounds the wait for a subscription to drain: NATS closes it
// once the server has the unsubscription and what it delivered before is
// handed over, within a round trip and a tenth of a second.
const drainWait = 5 * time.Second

// loginQueue is this replica's membership of the login queue group: the
// subscription while it is in, nil while it is out. Only serve's goroutine
// changes it, and stop once that has ended.
type loginQueue struct {
	s   *loginServer
	sub *nats.Subscription
}

// standingChanged has the server look again whether this replica answers
// logins: a verdict changed, an app was removed, or it began or ceased to
// lead.
func (s *loginServer) standingChanged() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

// answersLogins reports whether this replica belongs in the login queue
// group now, and why (or why not), in words for the log.
func (r *Refresher) answersLogins() (bool, string) {
	cannot := r.probes.cannotLead()
	switch {
	case r.Leading() && cannot > 0:
		return true, "it leads, though WeChat refuses " + strconv.Itoa(cannot) + " app(s) from here: their logins get WeChat's refusal"
	case r.Leading():
		return true, "it leads"
	case cannot > 0:
		return false, "WeChat refuses " + strconv.Itoa(cannot) + " app(s) from where it stands (see its ERROR lines) and it does not lead: the replicas that can answer the logins"
	}
	return true, "no probe found an app whose secret WeChat refuses from here"
}

// serve joins the queue group if this replica should be in it, and follows
// its standing until stop is called; stop leaves and waits for the
// exchanges under way.
func (s *loginServer) serve() (stop func(), err error) {
	q := &loginQueue{s: s}
	if in, why := s.r.answersLogins(); in {
		if err := q.join(why); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var following sync.WaitGroup
	following.Go(func() { q.follow(ctx) })
	return func() {
		cancel()
		following.Wait()
		q.leave()
		s.running.Wait()
	}, nil
}

// follow joins or leaves at each change of standing until ctx ends.
func (q *loginQueue) follow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.s.recheck:
		}
		in, why := q.s.r.answersLogins()
		switch {
		case in && q.sub == nil:
			if err := q.join(why); err != nil {
				q.s.r.log.Error("cannot answer logins: subscribing failed; it is tried again at the next change of this replica's standing", "error", err)
			}
		case !in && q.sub != nil:
			q.leave()
			q.s.r.log.Info("left the login queue group: " + why)
		}
	}
}

// join subscribes to the login requests in the queue group.
func (q *loginQueue) join(why string) error {
	subject := kv.Subjects{Prefix: q.s.r.cfg.SubjectPrefix}.Login("*")
	sub, err := q.s.r.nc.QueueSubscribe(subject, kv.LoginQueue, q.s.handle)
	if err != nil {
		return err
	}
	// Once flushed the server has the subscription: Ready then says the
	// replica answers logins, and the log line below is true.
	q.s.r.nc.FlushTimeout(time.Second)
	q.sub = sub
	q.s.r.log.Info("answering logins in the queue group: " + why)
	return nil
}

// leave drains the subscription, if any: the server sends it nothing more,
// and what it had sent is answered. It returns once the subscription is
// closed (or after drainWait).
func (q *loginQueue) leave() {
	if q.sub == nil {
		return
	}
	closed := q.sub.StatusChanged(nats.SubscriptionClosed)
	if err := q.sub.Drain(); err != nil {
		q.sub.Unsubscribe() // the connection is closed: nothing is pending
	} else {
		t := time.NewTimer(drainWait)
		select {
		case <-closed:
		case <-t.C:
		}
		t.Stop()
	}
	q.sub = nil
}
