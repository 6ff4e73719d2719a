package loop

import (
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// maxUnanswered bounds the calls without an answer a credential
// remembers: at the longest backoff (a minute by default) 256 cover hours
// of an outage, longer than any value WeChat issues lives.
const maxUnanswered = 256

// heard takes in how a call of the credential that went at at ended: a
// call with no answer (err is upstream.Unanswered) is remembered, and an
// answer with a value (err nil) returns the calls remembered, oldest first,
// and forgets them. An answer with an error tells nothing of what WeChat
// issued meanwhile, and changes nothing.
func (c *credential) heard(at time.Time, err error) (unanswered []time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		unanswered, c.st.unanswered = c.st.unanswered, nil
	case upstream.Unanswered(err):
		if len(c.st.unanswered) == maxUnanswered {
			c.st.unanswered = c.st.unanswered[1:]
		}
		c.st.unanswered = append(c.st.unanswered, at)
	}
	return unanswered
}

// IssuedFrom is the earliest time WeChat may have issued the value issued
// at: the time of the first call of the credential that got no answer,
// since the last answered with a value, if it went less than the value's
// lifetime before the call that brought it (a value made earlier would
// be dead by then); otherwise issued.At. A source whose values count from
// their first appearance (tickets) counts from it: a call that timed out
// may have made the value its retry sees first, and an expiry counted from
// the retry would be later than WeChat's.
func (a *Attempt) IssuedFrom(issued upstream.Issued) time.Time {
	oldest := issued.At.Add(-issued.ExpiresIn)
	for _, at := range a.unanswered {
		if at.After(oldest) && at.Before(issued.At) {
			return at
		}
	}
	return issued.At
}
