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
	t, known := s.tokens[token]
	if known && t.wecom {
		known = false // getticket takes an official account's token
	}
	var st *ticketState
	if known {
		st = s.ticketsOf(t.appid, typ)
		st.calls++
	}
	if ok, code := s.valid(token, now); !ok || !known {
		if st != nil {
			st.deadCalls++
		}
		if ok {
			code = 40001 // a WeCom token
		}
		writeJSON(w, errReply(code, ""))
		return
	}
	if typ != "jsapi" && typ != "wx_card" {
		writeJSON(w, errReply(40097, ""))
		return
	}
	if st.current == nil || !now.Before(st.current.expiresAt) {
		s.serial++
		st.current = &issued{appid: t.appid, value: s.mint(), expiresAt: now.Add(s.cfg.TicketExpiresIn)}
		st.issues++
	}
	writeJSON(w, map[string]any{"errcode": 0, "errmsg": "ok", "ticket": st.current.value,
		"expires_in": int(s.cfg.TicketExpiresIn / time.Second)})
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
	st := s.ticketsOf(appid, typ)
	if corp := s.app(appid).corpid; corp != "" && typ == "jsapi" {
		st = s.ticketsOf(corpTicketHolder(corp), typ)
	}
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
	st := s.ticketsOf(appid, typ)
	if corp := s.app(appid).corpid; corp != "" && typ == "jsapi" {
		st = s.ticketsOf(corpTicketHolder(corp), typ)
	}
	if st.current == nil {
		return time.Time{}
	}
	return st.current.expiresAt
}

// TicketCalls counts appid's getticket requests of type typ: all of them,
// the tickets issued, and those made with a token that did not work.
func (s *Server) TicketCalls(appid, typ string) (calls, issued, withDeadToken int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.ticketsOf(appid, typ)
	return st.calls, st.issues, st.deadCalls
}
