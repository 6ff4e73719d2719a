package publisher

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// DefaultWeComURL is WeCom's (企业微信) API.
const DefaultWeComURL = "https://qyapi.weixin.qq.com"

// wecomSource is WeCom's GET /cgi-bin/gettoken?corpid=ID&corpsecret=S: a
// token per app secret, which works for that app alone. WeCom's older
// documentation promised the same token for repeated calls within its
// validity, and WeCom may end a token early: a repeated value keeps its
// expiry, and a token a service saw refused is checked with WeCom's
// getcallbackip and fetched again.
type wecomSource struct{}

func (wecomSource) api() string { return "wecom_token" }

func (wecomSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	q := url.Values{"corpid": {g.appid}, "corpsecret": {g.secret.Reveal()}}
	status, body, err := u.Get(ctx, "cgi-bin/gettoken", q, g.secret.Reveal())
	if err != nil {
		return issuedValue{}, err
	}
	v, err := upstream.DecodeToken(status, body, upstream.WeComCodes)
	return issuedValue{Issued: v}, upstream.ScrubErrMsg(err, g.secret.Reveal())
}

func (wecomSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (wecomSource) checkable() bool { return true }

func (wecomSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

func (wecomSource) wecom() bool { return true }

// untilFrequencyReset is the pause after consecutive 45009s from WeCom:
// to the next minute after the first, to the next hour after more.
func untilFrequencyReset(now time.Time, failures int) time.Duration {
	if failures <= 1 {
		return now.Truncate(time.Minute).Add(time.Minute).Sub(now)
	}
	return now.Truncate(time.Hour).Add(time.Hour).Sub(now)
}

// wecomTicketSource is a WeCom ticket fetched with the app's token: the
// corp's jsapi ticket (GET /cgi-bin/get_jsapi_ticket) for wx.config, or
// the app's agent_config ticket (GET /cgi-bin/ticket/get?type=
// agent_config) for wx.agentConfig. Like WeChat's, a ticket stays the same
// while it is valid.
type wecomTicketSource struct{ kind Ticket }

func (s wecomTicketSource) api() string { return "wecom_" + s.kind.kind() }

func (s wecomTicketSource) fetch(ctx context.Context, u *upstream.Client, g grant) (issuedValue, error) {
	path, q := "cgi-bin/get_jsapi_ticket", url.Values{"access_token": {g.token}}
	if s.kind == TicketAgentConfig {
		path = "cgi-bin/ticket/get"
		q.Set("type", "agent_config")
	}
	status, body, err := u.Get(ctx, path, q, g.token)
	if err != nil {
		return issuedValue{}, err
	}
	// WeCom's codes, not WeChat's: 45009 is its hourly limit.
	v, err := upstream.DecodeTicket(status, body, upstream.WeComCodes)
	return issuedValue{Issued: v}, upstream.ScrubErrMsg(err, g.token)
}

func (wecomTicketSource) window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (wecomTicketSource) checkable() bool { return false }

func (wecomTicketSource) repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

func (wecomTicketSource) wecom() bool { return true }

// WeCom's hourly limits on ticket calls: 100 per app and kind, and 400
// jsapi tickets per corp.
const (
	wecomTicketsPerHour     = 100
	wecomCorpTicketsPerHour = 400
)

// hourlyLimits counts the WeCom ticket calls of the last hour, by app and
// kind and by corp, so that the refresher stays within WeCom's limits
// rather than learn them from 45009. The count is this replica's: after
// a failover the new leader starts from zero, and WeCom's 45009 remains
// the backstop.
type hourlyLimits struct {
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
func (l *hourlyLimits) take(key string, now time.Time) error {
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
