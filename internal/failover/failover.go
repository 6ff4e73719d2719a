// Package failover keeps the order of an API's bases (WeChat's
// api.weixin.qq.com, then api2.weixin.qq.com, its documented fallback) and
// the rule that moves calls from one to the next: a base that fails twice
// in a row (no answer, HTTP 5xx, errcode -1) gives way to the next; calls
// stay there while it works; after Recheck one call tries the first base
// again, and calls go back to it if it answers. The refresher's WeChat
// client and the agent's proxy both follow it.
//
// The rule only says where the next call goes. It never sends a call
// twice: a failed call is the caller's failed attempt, and the caller's
// own pacing says when it tries again. So no credential is ever fetched
// from two bases at once, which would issue two tokens, the second killing
// the first.
package failover

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"
)

// InARow is how many failures in a row on the current base move calls to
// the next: one failure is a blip (a busy answer, a dropped connection)
// that the caller's retry handles where it is; a second in a row says the
// base itself is in trouble.
const InARow = 2

// DefaultRecheck is how long calls stay on a later base before one call
// tries the first again. The first base (api.weixin.qq.com) is WeChat's
// nearest entry and the later ones its fallbacks, so going back is worth a
// try; each try that fails costs one call's attempt (retried by its
// caller, on the base that works), so ten minutes keeps that to six an
// hour while an outage lasts, and brings calls back well within a token's
// two hours once it is over.
const DefaultRecheck = 10 * time.Minute

// Config is what New needs.
type Config struct {
	URLs    []*url.URL    // the bases, in order of preference; at least one
	Recheck time.Duration // DefaultRecheck when zero
	API     string        // the API's name in logs, such as "WeChat"
	Logger  *slog.Logger  // silent when nil
	Now     func() time.Time
}

// Bases are an API's bases and where calls go now. They are safe for
// concurrent use.
type Bases struct {
	urls    []*url.URL
	recheck time.Duration
	api     string
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	current int       // the base calls go to
	since   time.Time // when calls moved to current, or the first base's last try failed
	trying  bool      // a call is trying the first base again
	health  []health  // by base
}

type health struct {
	inARow   int  // failures in a row
	down     bool // failed InARow times in a row (or its try failed) and has not answered since
	failures uint64
}

// New returns the bases of cfg, calls going to the first.
func New(cfg Config) (*Bases, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("failover: no base URL")
	}
	for _, u := range cfg.URLs {
		if err := Check(u); err != nil {
			return nil, err
		}
	}
	if cfg.Recheck < 0 {
		return nil, fmt.Errorf("failover: a negative recheck, %s", cfg.Recheck)
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = DefaultRecheck
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Bases{urls: cfg.URLs, recheck: cfg.Recheck, api: cfg.API, log: cfg.Logger, now: cfg.Now,
		health: make([]health, len(cfg.URLs))}, nil
}

// Parse reads a comma-separated list of base URLs, such as
// "https://api.weixin.qq.com,https://api2.weixin.qq.com". Its error names
// the entry that is wrong.
func Parse(list string) ([]*url.URL, error) {
	var urls []*url.URL
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("entry %d of %q is empty: write base URLs separated by commas, such as https://api.weixin.qq.com,https://api2.weixin.qq.com", i+1, list)
		}
		u, err := url.Parse(entry)
		if err != nil {
			return nil, fmt.Errorf("entry %d does not parse as a URL: write it as https://host[/path]", i+1)
		}
		if err := Check(u); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		urls = append(urls, u)
	}
	return urls, nil
}

// Check refuses a base URL that cannot be an API's: credentials are sent
// there, so it must be a plain http(s) scheme, host and path.
func Check(u *url.URL) error {
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q is not an http(s) URL", u.Redacted())
	case u.Host == "":
		return fmt.Errorf("%q has no host", u.Redacted())
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q must be a scheme, a host and at most a path", u.Redacted())
	}
	return nil
}

// Call is where one call goes. Exactly one of Succeeded, Failed and
// Abandoned must be called when it is over.
type Call struct {
	b      *Bases
	base   int
	trying bool // this call tries the first base again
}

// Pick returns where the next call goes: the current base, or the first
// one when it is time to try it again and no other call is trying it.
func (b *Bases) Pick() Call {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current != 0 && !b.trying && b.now().Sub(b.since) >= b.recheck {
		b.trying = true
		return Call{b: b, base: 0, trying: true}
	}
	return Call{b: b, base: b.current}
}

// URL is the base the call goes to.
func (c Call) URL() *url.URL { return c.b.urls[c.base] }

// Succeeded records that the base answered (whatever WeChat said: an
// errcode other than -1 is an answer).
func (c Call) Succeeded() {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	h := &b.health[c.base]
	h.inARow, h.down = 0, false
	if c.trying {
		b.trying = false
		if b.current != 0 {
			b.log.Info(b.api+"'s first API base answers again: calls go back to it",
				"base", b.urls[0].Redacted(), "from", b.urls[b.current].Redacted())
			b.moveTo(0)
		}
	}
}

// Failed records that the base gave no answer, a 5xx or errcode -1; why
// says which, and must hold no secret. The second failure in a row of the
// current base moves calls to the next.
func (c Call) Failed(why string) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	h := &b.health[c.base]
	h.failures++
	h.inARow++
	if c.trying {
		b.trying = false
		h.down = true
		if b.current != 0 {
			b.since = b.now() // the next try is a whole recheck away
			b.log.Debug(b.api+"'s first API base still fails: calls stay on "+b.urls[b.current].Redacted(),
				"base", b.urls[0].Redacted(), "error", why)
		}
		return
	}
	if h.inARow < InARow {
		return
	}
	h.down = true
	if c.base != b.current || len(b.urls) == 1 {
		return // a call from before the move, or nowhere to go
	}
	next := (b.current + 1) % len(b.urls)
	b.log.Warn(fmt.Sprintf("%s's API base failed %d times in a row: calls go to the next base", b.api, h.inARow),
		"base", b.urls[b.current].Redacted(), "next", b.urls[next].Redacted(), "error", why)
	b.moveTo(next)
}

// Abandoned records a call given up by its caller (shut down, or its
// client gone): it says nothing of the base.
func (c Call) Abandoned() {
	if c.trying {
		c.b.mu.Lock()
		c.b.trying = false
		c.b.mu.Unlock()
	}
}

// moveTo makes base i the current one, with a clean count of failures.
// Callers hold b.mu.
func (b *Bases) moveTo(i int) {
	b.current, b.since = i, b.now()
	b.health[i].inARow = 0
}

// Health is what is known of one base.
type Health struct {
	URL      string // the base, as configured (never with credentials: Check refuses them)
	Current  bool   // calls go to it
	Up       bool   // false once it failed InARow times in a row, until it answers again
	Failures uint64 // calls that got no answer, a 5xx or errcode -1, ever
}

// Health reports every base, in order.
func (b *Bases) Health() []Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Health, len(b.urls))
	for i, h := range b.health {
		out[i] = Health{URL: b.urls[i].Redacted(), Current: i == b.current, Up: !h.down, Failures: h.failures}
	}
	return out
}

// Len is the number of bases.
func (b *Bases) Len() int { return len(b.urls) }

// Busy is WeChat's errcode -1, "system error": the base is in trouble.
const Busy = -1

// Failing reports whether an answer counts against its base: an HTTP 5xx,
// or WeChat's errcode -1. Any other answer, a 4xx or another errcode
// included, is the base working (the call itself was wrong).
func Failing(status, errcode int) bool {
	return status >= 500 || errcode == Busy
}
