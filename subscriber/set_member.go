package subscriber

import (
	"context"
	"net/http"
)

// Member is one key of a Set, with the per-key calls of a Subscriber, so
// that code written for one key takes either: jssdk.Sign signs with a
// Set's ticket through it. It is a small value; each call reads the Set.
type Member struct {
	set *Set
	key string
}

// Member returns key's Member, whether the Set holds the key or not (yet).
func (s *Set) Member(key string) Member { return Member{set: s, key: key} }

// Key is the member's key.
func (m Member) Key() string { return m.key }

// Token is Set.Token of the member's key.
func (m Member) Token() Token { return m.set.Token(m.key) }

// Current is Set.Current of the member's key.
func (m Member) Current() (Token, error) { return m.set.Current(m.key) }

// Refresh is Set.Refresh of the member's key.
func (m Member) Refresh(ctx context.Context, stale uint64) (Token, error) {
	return m.set.Refresh(ctx, m.key, stale)
}

// Transport is Set.Transport of the member's key.
func (m Member) Transport(base http.RoundTripper) http.RoundTripper {
	return m.set.Transport(m.key, base)
}

// Transport returns an http.RoundTripper for WeChat API calls with key's
// access_token, as Subscriber.Transport does: it adds the current token to
// each request's query and, when WeChat rejects it, has the refresher
// replace it and retries the request once. A key the Set holds no token of
// answers every request with an error (wrapping ErrUnknownKey, or
// ErrRemoved), and so does a ticket's.
func (s *Set) Transport(key string, base http.RoundTripper) http.RoundTripper {
	return newTransport(s.Member(key), base)
}

func (m Member) via() link {
	return link{nc: m.set.nc, subjects: m.set.subjects, opts: &m.set.opts, life: m.set.ctx}
}

func (m Member) removedError() error {
	if e := m.set.keys.get(m.key); e != nil {
		return e.removal.Load().error(m.key)
	}
	return nil
}

func (m Member) valueAt(revision uint64) (string, bool) {
	if e := m.set.keys.get(m.key); e != nil {
		return valueAt(revision, e.current.Load(), e.before.Load())
	}
	return "", false
}

func (m Member) waitNewer(ctx context.Context, revision uint64) (Token, error) {
	return m.set.waitNewer(ctx, m.key, revision)
}

func (m Member) readKey(ctx context.Context) {
	if b := m.set.bucket.Load(); b != nil {
		m.set.get(ctx, *b, m.key)
	}
}

// held reports an error wrapping ErrUnknownKey when the Set holds nothing
// of the member's key.
func (m Member) held() error {
	if m.set.keys.get(m.key) == nil {
		return m.set.unknownKey(m.key)
	}
	return nil
}
