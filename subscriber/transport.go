package subscriber

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/kv"
)

// refreshTimeout bounds the refresh Transport waits for when the request's
// context sets no earlier deadline.
const refreshTimeout = 15 * time.Second

// Transport returns an http.RoundTripper for WeChat API calls: it adds the
// current access_token to each request's query and, when WeChat answers
// errcode 40001, 40014 or 42001 (the token is not valid), asks the
// refresher for a new token and retries the request once with it. base
// sends the requests; http.DefaultTransport when nil.
//
// A request whose body cannot be replayed (no GetBody) is not retried. A
// subscriber that follows a ticket has no token to add: its Transport
// answers every request with an error; so does one whose key was removed
// (ErrRemoved).
func (s *Subscriber) Transport(base http.RoundTripper) http.RoundTripper {
	return newTransport(s, base)
}

func newTransport(k followedKey, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{key: k, base: base}
}

type transport struct {
	key  followedKey
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	l, key := t.key.via(), t.key.Key()
	if l.closed() {
		return nil, ErrClosed
	}
	if err := t.key.removedError(); err != nil {
		return nil, err
	}
	if h, ok := t.key.(interface{ held() error }); ok { // a Set's key: one it may hold nothing of
		if err := h.held(); err != nil {
			return nil, err
		}
	}
	if _, kind := kv.SplitKey(key); kind != kv.KindToken {
		return nil, fmt.Errorf("subscriber: %s is a %s, not an access_token to call WeChat with", key, kind)
	}
	token := t.key.Token()
	resp, err := t.base.RoundTrip(withToken(req, token.Value))
	if err != nil {
		return nil, err
	}
	code, resp, err := wechaterr.Peek(resp)
	if err != nil || !TokenRejected(code) {
		return resp, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	ctx, cancel := context.WithTimeout(req.Context(), refreshTimeout)
	defer cancel()
	fresh, rerr := refresh(ctx, t.key, token.Revision, strconv.Itoa(code))
	if rerr != nil || fresh.Value == token.Value {
		l.opts.logger.Warn("WeChat rejected the token and no newer one came",
			"appid", key, "errcode", code, "revision", token.Revision, "error", rerr)
		return resp, nil
	}
	retry := withToken(req, fresh.Value)
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return resp, nil
		}
		retry.Body = body
	}
	resp.Body.Close()
	return t.base.RoundTrip(retry)
}

// withToken returns a copy of req with access_token set in its query.
func withToken(req *http.Request, token string) *http.Request {
	r := req.Clone(req.Context())
	q := r.URL.Query()
	q.Set("access_token", token)
	r.URL.RawQuery = q.Encode()
	return r
}
