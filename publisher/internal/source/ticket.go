package source

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Ticket is GET /cgi-bin/ticket/getticket, called with the app's current
// access_token: the jsapi_ticket (type=jsapi) that signs wx.config, or the
// card api_ticket (type=wx_card). While a ticket is valid WeChat returns
// the same one, saying 7200 s each time, and a token rotation does not
// change it: a ticket's expiry is counted from when its value first
// appeared, and an answer repeating it writes nothing.
type Ticket struct {
	kind   string // kv.KindJSAPITicket or kv.KindWxCardTicket
	client *upstream.Client
	rescue *Rescuer // of a spent quota; nil: none
}

// NewTicket returns the source of a ticket of kind (a kv kind), fetched
// from client's API with the app's token.
func NewTicket(kind string, client *upstream.Client) *Ticket {
	return &Ticket{kind: kind, client: client}
}

func (s *Ticket) API() string { return s.kind }

func (s *Ticket) Fetch(ctx context.Context, a *loop.Attempt) (upstream.Issued, error) {
	q := url.Values{"access_token": {a.Token}, "type": {strings.TrimSuffix(s.kind, "_ticket")}}
	status, body, err := s.client.Get(ctx, "cgi-bin/ticket/getticket", q, a.Token)
	if err != nil {
		return upstream.Issued{}, err
	}
	issued, err := upstream.DecodeTicket(status, body, upstream.TicketCodes)
	return issued, upstream.ScrubErrMsg(err, a.Token)
}

func (*Ticket) Window(refreshBefore time.Duration) time.Duration { return refreshBefore }

// Repeated: WeChat gives the same ticket until it expires.
func (*Ticket) Repeated(held kv.Credential, window time.Duration, now time.Time) (time.Time, bool) {
	return firstAppearanceRepeated(held, window, now)
}

// Record counts a ticket from its first appearance, which a call that got
// no answer may have been.
func (*Ticket) Record(a *loop.Attempt, issued upstream.Issued) kv.Credential {
	return firstAppearance(a, issued)
}

var _ loop.Source = (*Ticket)(nil)
