package source

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/platform"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// ticketWait is how long a platform without a verify ticket that works
// waits for the next push before it restarts the push again; a push ends
// the wait (WaitsForTicket).
const ticketWait = 10 * time.Minute

// Component is a third-party platform's (开放平台) component_access_token:
// POST /cgi-bin/component/api_component_token, with the newest
// component_verify_ticket WeChat pushed. Without a ticket there is no call
// at all; without one that works WeChat is asked to push one
// (api_start_push_ticket), and the token is fetched when it comes.
type Component struct {
	appid     string // the component appid
	secret    upstream.Secret
	client    *upstream.Client
	platforms *platform.Platforms
	rescue    *Rescuer // of a spent quota; nil: none
}

// NewComponent returns the source of the component token of the platform
// appid, fetched with its secret and the tickets platforms holds.
func NewComponent(appid string, secret upstream.Secret, client *upstream.Client, platforms *platform.Platforms) *Component {
	return &Component{appid: appid, secret: secret, client: client, platforms: platforms}
}

func (*Component) API() string { return "component_token" }

// BeforeFetch takes the newest verify ticket, and refuses the fetch, with
// no call, when none has been pushed yet.
func (s *Component) BeforeFetch(_ context.Context, a *loop.Attempt) error {
	ticket, ok := s.platforms.Ticket(s.appid)
	if !ok {
		return &upstream.Error{Class: upstream.ClassTicket, ErrMsg: "no component_verify_ticket has been pushed yet",
			Means: "the platform has no verify ticket: WeChat is asked to push one"}
	}
	a.Grant = ticket.Ticket
	return nil
}

func (s *Component) Fetch(ctx context.Context, a *loop.Attempt) (upstream.Issued, error) {
	ticket, _ := a.Grant.(string)
	body, _ := json.Marshal(map[string]string{
		"component_appid": s.appid, "component_appsecret": s.secret.Reveal(), "component_verify_ticket": ticket,
	})
	status, answer, err := s.client.PostJSON(ctx, "cgi-bin/component/api_component_token", nil, body, s.secret.Reveal())
	if err != nil {
		return upstream.Issued{}, err
	}
	var ans struct {
		Token     *string         `json:"component_access_token"`
		ExpiresIn json.RawMessage `json:"expires_in"`
	}
	if err := upstream.DecodeJSON(status, answer, upstream.ComponentCodes, &ans); err != nil {
		return upstream.Issued{}, upstream.ScrubErrMsg(upstream.ScrubErrMsg(err, s.secret.Reveal()), ticket)
	}
	return upstream.IssuedFrom("component_access_token", ans.Token, ans.ExpiresIn)
}

func (*Component) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

func (*Component) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return tokenRepeated(held, window, now)
}

// Failed asks WeChat to push a verify ticket again when the platform has
// none that works, and waits for it: a push ends the wait. A spent quota
// is rescued (platformrescue.go).
func (s *Component) Failed(a *loop.Attempt, err error, _ int, _ time.Time) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	if !WaitsForTicket(err) {
		return s.rescueFailed(a, err)
	}
	s.startPush(a)
	return ticketWait, true
}

// WaitsForTicket reports whether err is a platform's failure for want of a
// verify ticket that works: the next push ends its wait.
func WaitsForTicket(err error) bool { return upstream.ClassOf(err) == upstream.ClassTicket }

// startPush asks WeChat to push a verify ticket again. The fetch's failure
// (an ERROR line and a failure event) says why; this says what was done.
func (s *Component) startPush(a *loop.Attempt) {
	err := a.Do("start_push_ticket", func(ctx context.Context) error {
		return ProbeComponent(ctx, s.client, s.appid, s.secret)
	})
	switch {
	case errors.Is(err, loop.ErrEnding):
		return
	case err != nil:
		a.Log().Warn("cannot restart the verify ticket push", "component_appid", s.appid, "error", upstream.ScrubErrMsg(err, s.secret.Reveal()))
		return
	}
	a.Log().Info("asked WeChat to push the verify ticket again", "component_appid", s.appid)
}

var (
	_ loop.Source      = (*Component)(nil)
	_ loop.Preparer    = (*Component)(nil)
	_ loop.FailureHook = (*Component)(nil)
)
