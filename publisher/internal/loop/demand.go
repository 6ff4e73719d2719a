package loop

import (
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// What a service's refresh request (endpoint.go) asks of a credential: the
// value held, or a rotation. The decision is taken under the credential's
// lock, with the rotation it starts or joins.

// admission is how a refresh request for the credential was decided
// (admit): answered with the value held, or with the rotation it started
// or joined.
type admission struct {
	c       *credential
	f       *flight // the rotation the answer waits on; nil when the answer is now
	started bool    // this request started f
	behind  bool    // f stored the revision the request names: decide again once f lands
	forced  bool    // this request started a forced refresh
	verdict verdict // the answer now, when f is nil
	rev     uint64
	rec     *kv.Credential
	since   time.Duration // since the last forced refresh, for rateLimited
	quiet   time.Time     // until when WeChat is not asked again, for repeating
}

// verdict is the answer admit decided on, when it is not a rotation's.
type verdict int

const (
	removedVerdict     verdict = iota // no longer kept: unknown_app
	futureVerdict                     // the revision named is newer than the one known: bad_request
	repeatingVerdict                  // WeChat repeats the value that expired; asked again later
	currentVerdict                    // no revision named: the value held
	olderVerdict                      // an older revision named: the value held
	rateLimitedVerdict                // a forced refresh ran too recently
	stoppingVerdict                   // no rotation could start: the term is ending
)

// admit decides a refresh request naming stale (nil: none), as the
// contract says, and starts or joins the rotation that answers it.
func (c *credential) admit(stale *uint64, now time.Time, minInterval time.Duration, start func(f *flight, base outcome, m mode, reason string) bool) admission {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.st
	ad := admission{c: c, rev: s.rev}
	if s.removed { // by a reload a moment ago
		ad.verdict = removedVerdict
		return ad
	}
	valid := s.validRecord(now)
	ad.rec = valid
	begin := func(m mode) {
		ad.f, ad.started = c.startOrJoin(func(f *flight, base outcome) bool { return start(f, base, m, kv.ReasonRequested) })
		if ad.f == nil {
			ad.verdict = stoppingVerdict
		}
	}
	switch {
	case stale != nil && c.flight != nil && *stale > c.flight.from:
		// The rotation under way has stored the revision named stale, or
		// is storing it: services that read the bucket, or took the new
		// value in at once, can name it before the rotation lands. It
		// cannot be the rotation that replaces it.
		ad.f, ad.behind = c.flight, true
	case stale != nil && *stale > s.rev:
		ad.verdict = futureVerdict
	case valid == nil && c.flight == nil && s.rec != nil && now.Before(s.quietUntil):
		// WeChat answered with the value that expired, and is not asked
		// again before quietUntil: a request must not make it sooner.
		ad.verdict, ad.rec, ad.quiet = repeatingVerdict, s.rec, s.quietUntil
	case valid == nil:
		// No valid value at all: fetch one, whatever the request named.
		begin(modeScheduled)
	case stale == nil:
		ad.verdict = currentVerdict
	case *stale < s.rev:
		ad.verdict = olderVerdict
	case c.flight != nil:
		ad.f = c.flight
	case !s.lastForced.IsZero() && now.Sub(s.lastForced) < minInterval:
		ad.verdict, ad.since = rateLimitedVerdict, now.Sub(s.lastForced)
	default:
		s.lastForced = now
		ad.forced = true
		begin(modeForced)
	}
	return ad
}
