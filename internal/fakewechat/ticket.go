package fakewechat

import (
	"net/http"
	"time"
)

// ticketState is what the fake knows of one app's tickets of one type.
type ticketState struct {
	current   *issued
	calls     int // getticket requests of this type with one of the app's tokens
	issues    int
	deadCalls int         // of those calls, the ones made with a token that did not work
	recent    []time.Time // WeCom: the calls of the last hour, for its limits
}

// serveTicket answers GET /cgi-bin/ticket/getticket?access_token=T&type=
// jsapi|wx_card: while the app's ticket of that type is valid, the same
// one, saying expires_in 7200 each time, whatever token asks (a token
// rotation does not change it); then a new one.
func (s *Server) serveTicket(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	token, typ := q.Get("access_token"), q.Get("type")
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t, st, refused := s.ticketCaller(token, typ, false, now)
	switch {
	case refused != nil:
		writeJSON(w, refused)
	case typ != "jsapi" && typ != "wx_card":
		writeJSON(w, errReply(40097, ""))
	default:
		if spent := s.take(t.appid, PathGetTicket, now); spent != nil {
			writeJSON(w, spent)
			return
		}
		writeJSON(w, s.ticketAnswer(st, t.appid, now))
	}
}

// ticketCaller counts a ticket call of type typ made with token, for the
// app the token belongs to, and returns that token and the app's ticket
// state, or the errcode answer for a token that does not work there: dead,
// unknown, or of the other platform (wecom says which one the API is).
// Callers hold s.mu.
func (s *Server) ticketCaller(token, typ string, wecom bool, now time.Time) (*issued, *ticketState, map[string]any) {
	t, known := s.tokens[token]
	known = known && t.wecom == wecom
	var st *ticketState
	if known {
		st = s.ticketsOf(t.appid, typ)
		st.calls++
	}
	if ok, code := s.valid(token, now); !ok || !known {
		if st != nil {
			st.deadCalls++
		}
		if ok { // the other platform's token
			code = 40001
			if wecom {
				code = 40014
			}
		}
		return nil, nil, errReply(code, "")
	}
	return t, st, nil
}

// ticketAnswer answers with holder's ticket, issuing a new one to appid if
// it has none that is valid, and saying 7200 whatever it has left.
// Callers hold s.mu.
func (s *Server) ticketAnswer(holder *ticketState, appid string, now time.Time) map[string]any {
	if holder.current == nil || !now.Before(holder.current.expiresAt) {
		s.serial++
		holder.current = &issued{appid: appid, value: s.mint(), expiresAt: now.Add(s.cfg.TicketExpiresIn)}
		holder.issues++
	}
	return map[string]any{"errcode": 0, "errmsg": "ok", "ticket": holder.current.value,
		"expires_in": int(s.cfg.TicketExpiresIn / time.Second)}
}

// ticketsOf returns appid's ticket state of type typ. Callers hold s.mu.
func (s *Server) ticketsOf(appid, typ string) *ticketState {
	a := s.app(appid)
	if a.tickets == nil {
		a.tickets = map[string]*ticketState{}
	}
	st, ok := a.tickets[typ]
	if !ok {
		st = &ticketState{}
		a.tickets[typ] = st
	}
	return st
}

// Ticket is appid's current ticket of type typ (jsapi or wx_card; for a
// WeCom app's key, jsapi, its corp's, or agent_config), "" if none was
// issued, and whether it is still valid.
func (s *Server) Ticket(appid, typ string) (ticket string, valid bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.ticketHolder(appid, typ)
	if st.current == nil {
		return "", false
	}
	return st.current.value, s.cfg.Now().Before(st.current.expiresAt)
}

// TicketExpiresAt is when the current ticket of Ticket(appid, typ)
// expires at the fake: the zero time if there is none.
func (s *Server) TicketExpiresAt(appid, typ string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.ticketHolder(appid, typ)
	if st.current == nil {
		return time.Time{}
	}
	return st.current.expiresAt
}

// ticketHolder is the state that holds appid's ticket of type typ: its
// own, or for a WeCom app's jsapi ticket its corp's. Callers hold s.mu.
func (s *Server) ticketHolder(appid, typ string) *ticketState {
	if corp := s.app(appid).corpid; corp != "" && typ == "jsapi" {
		return s.ticketsOf(corpTicketHolder(corp), typ)
	}
	return s.ticketsOf(appid, typ)
}

// TicketCalls counts appid's getticket requests of type typ: all of them,
// the tickets issued, and those made with a token that did not work.
func (s *Server) TicketCalls(appid, typ string) (calls, issued, withDeadToken int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.ticketsOf(appid, typ)
	return st.calls, st.issues, st.deadCalls
}
