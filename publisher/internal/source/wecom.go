package source

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// WeComToken is WeCom's GET /cgi-bin/gettoken?corpid=ID&corpsecret=S: a
// token per app secret, which works for that app alone. WeCom's older
// documentation promised the same token for repeated calls within its
// validity, and WeCom may end a token early: a repeated value keeps its
// expiry, and a token a service saw refused is checked with WeCom's
// getcallbackip and fetched again.
type WeComToken struct {
	corpid string
	secret upstream.Secret
	client *upstream.Client // WeCom's API
}

// NewWeComToken returns the source of the token of a WeCom app secret of
// corpid, fetched from client, WeCom's API.
func NewWeComToken(corpid string, secret upstream.Secret, client *upstream.Client) *WeComToken {
	return &WeComToken{corpid: corpid, secret: secret, client: client}
}

func (*WeComToken) API() string { return "wecom_token" }

func (s *WeComToken) Fetch(ctx context.Context, _ *loop.Attempt) (upstream.Issued, error) {
	q := url.Values{"corpid": {s.corpid}, "corpsecret": {s.secret.Reveal()}}
	status, body, err := s.client.Get(ctx, "cgi-bin/gettoken", q, s.secret.Reveal())
	if err != nil {
		return upstream.Issued{}, err
	}
	issued, err := upstream.DecodeToken(status, body, upstream.WeComCodes)
	return issued, upstream.ScrubErrMsg(err, s.secret.Reveal())
}

func (*WeComToken) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (*WeComToken) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

// Check asks WeCom whether the token works.
func (s *WeComToken) Check(ctx context.Context, token string) (bool, error) {
	return s.client.CheckToken(ctx, token)
}

// Record says the token came from WeCom, counted from its first
// appearance, which a call that got no answer may have been.
func (*WeComToken) Record(a *loop.Attempt, issued upstream.Issued) kv.Credential {
	rec := firstAppearance(a, issued)
	rec.API = kv.APIWeCom
	return rec
}

// Failed pauses after WeCom's frequency limit until it resets.
func (*WeComToken) Failed(_ *loop.Attempt, err error, failures int, now time.Time) (time.Duration, bool) {
	return frequencyPause(err, failures, now)
}

// WeComTicket is a WeCom ticket fetched with the app's token: the corp's
// jsapi ticket (GET /cgi-bin/get_jsapi_ticket) for wx.config, or the
// app's agent_config ticket (GET /cgi-bin/ticket/get?type=agent_config)
// for wx.agentConfig. Like WeChat's, a ticket stays the same while it is
// valid; a corp has one jsapi ticket, kept under each of its apps that
// asks for it, whose expiry counts from when any first saw it. The calls
// count against WeCom's hourly limits.
type WeComTicket struct {
	kind   string // kv.KindJSAPITicket or kv.KindAgentConfigTicket
	client *upstream.Client
	limits *HourlyLimits
}

// NewWeComTicket returns the source of a WeCom ticket of kind (a kv kind),
// fetched from client, WeCom's API, with the app's token, its calls
// counted in limits.
func NewWeComTicket(kind string, client *upstream.Client, limits *HourlyLimits) *WeComTicket {
	return &WeComTicket{kind: kind, client: client, limits: limits}
}

func (s *WeComTicket) API() string { return "wecom_" + s.kind }

func (s *WeComTicket) Fetch(ctx context.Context, a *loop.Attempt) (upstream.Issued, error) {
	path, q := "cgi-bin/get_jsapi_ticket", url.Values{"access_token": {a.Token}}
	if s.kind == kv.KindAgentConfigTicket {
		path = "cgi-bin/ticket/get"
		q.Set("type", "agent_config")
	}
	status, body, err := s.client.Get(ctx, path, q, a.Token)
	if err != nil {
		return upstream.Issued{}, err
	}
	// WeCom's codes, not WeChat's: 45009 is its hourly limit.
	issued, err := upstream.DecodeTicket(status, body, upstream.WeComCodes)
	return issued, upstream.ScrubErrMsg(err, a.Token)
}

func (*WeComTicket) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (*WeComTicket) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

// Spend counts the call against WeCom's hourly limits.
func (s *WeComTicket) Spend(a *loop.Attempt) error { return s.limits.take(a.Key, a.Now()) }

// Record counts a ticket from its first appearance: a call of its own
// that got no answer may have been it, and for a corp's jsapi ticket the
// record of another app of the corp that holds the same ticket, if that
// is earlier.
func (s *WeComTicket) Record(a *loop.Attempt, issued upstream.Issued) kv.Credential {
	rec := firstAppearance(a, issued)
	corpid, _, _ := kv.SplitWeComKey(a.Key)
	if s.kind != kv.KindJSAPITicket {
		return rec
	}
	for _, peer := range a.Peers() {
		if other, _, ok := kv.SplitWeComKey(peer.Key); ok && other == corpid && peer.Value == issued.Value && !peer.ExpiresAt.After(rec.ExpiresAt) {
			rec.FetchedAt, rec.ExpiresIn, rec.ExpiresAt = peer.FetchedAt, peer.ExpiresIn, peer.ExpiresAt
			break
		}
	}
	return rec
}

// Failed pauses after WeCom's frequency limit until it resets, and after
// the refresher's own count of the hourly limits until a call leaves the
// hour.
func (*WeComTicket) Failed(_ *loop.Attempt, err error, failures int, now time.Time) (time.Duration, bool) {
	var paused *pausedError
	if errors.As(err, &paused) {
		return max(paused.until.Sub(now), 0), true
	}
	return frequencyPause(err, failures, now)
}

// frequencyPause is the pause after consecutive 45009s from WeCom: to the
// next minute after the first, to the next hour after more.
func frequencyPause(err error, failures int, now time.Time) (time.Duration, bool) {
	if upstream.ClassOf(err) != upstream.ClassFrequency {
		return 0, false
	}
	if failures <= 1 {
		return now.Truncate(time.Minute).Add(time.Minute).Sub(now), true
	}
	return now.Truncate(time.Hour).Add(time.Hour).Sub(now), true
}

var (
	_ loop.Source      = (*WeComToken)(nil)
	_ loop.Checker     = (*WeComToken)(nil)
	_ loop.Recorder    = (*WeComToken)(nil)
	_ loop.FailureHook = (*WeComToken)(nil)
	_ loop.Source      = (*WeComTicket)(nil)
	_ loop.Budgeter    = (*WeComTicket)(nil)
	_ loop.Recorder    = (*WeComTicket)(nil)
	_ loop.FailureHook = (*WeComTicket)(nil)
)

// WeCom's hourly limits on ticket calls: 100 per app and kind, and 400
// jsapi tickets per corp.
const (
	wecomTicketsPerHour     = 100
	wecomCorpTicketsPerHour = 400
)

// HourlyLimits counts the WeCom ticket calls of the last hour, by app and
// kind and by corp, so that the refresher stays within WeCom's limits
// rather than learn them from 45009. The count is this replica's: after
// a failover the new leader starts from zero, and WeCom's 45009 remains
// the backstop.
type HourlyLimits struct {
	mu    sync.Mutex
	calls map[string][]time.Time
}

// pausedError is a call the refresher did not make before until.
type pausedError struct {
	until  time.Time
	reason string
}

func (e *pausedError) Error() string { return "publisher: " + e.reason }

// take records a ticket call of key (a WeCom ticket key) at now, or says
// until when none may be made.
func (l *HourlyLimits) take(key string, now time.Time) error {
	corpid, _, _ := kv.SplitWeComKey(key)
	_, kind := kv.SplitKey(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = map[string][]time.Time{}
	}
	limits := map[string]int{key: wecomTicketsPerHour}
	if kind == kv.KindJSAPITicket {
		limits["corp "+corpid] = wecomCorpTicketsPerHour
	}
	for name, limit := range limits {
		recent := within(l.calls[name], now.Add(-time.Hour))
		l.calls[name] = recent
		if len(recent) >= limit {
			return &pausedError{until: recent[0].Add(time.Hour), reason: fmt.Sprintf(
				"%d WeCom ticket calls for %s in the last hour, WeCom's limit: the next at %s", len(recent), name, recent[0].Add(time.Hour).UTC().Format(time.RFC3339))}
		}
	}
	for name := range limits {
		l.calls[name] = append(l.calls[name], now)
	}
	return nil
}

// within drops the times before since.
func within(times []time.Time, since time.Time) []time.Time {
	i := 0
	for i < len(times) && times[i].Before(since) {
		i++
	}
	return times[i:]
}
