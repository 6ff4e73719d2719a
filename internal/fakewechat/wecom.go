package fakewechat

import (
	"net/http"
	"time"
)

// AddWeComApp registers a WeCom app secret of corpid, known to the fake's
// counters (Calls, Current, Issued, ...) by its wxtoken key,
// "<corpid>-<agent>". WeCom itself knows no agent in gettoken: the secret
// tells the apps apart.
func (s *Server) AddWeComApp(corpid, agent, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := corpid + "-" + agent
	a := s.app(key)
	a.secret, a.corpid = secret, corpid
	s.wecom[corpid+" "+secret] = key
}

// serveWeComToken answers GET /cgi-bin/gettoken?corpid=ID&corpsecret=S:
// the app's token while it is valid (WeCom's older documentation promised
// the same result within validity), a new one once it expired or WeCom
// ended it early (Revoke). More than WeComTokensPerMinute calls in a
// minute get 45009, WeCom's frequency limit.
func (s *Server) serveWeComToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	corpid, secret := q.Get("corpid"), q.Get("corpsecret")
	s.mu.Lock()
	key, known := s.wecom[corpid+" "+secret]
	corpKnown := false
	for k := range s.wecom {
		if len(k) > len(corpid) && k[:len(corpid)+1] == corpid+" " {
			corpKnown = true
		}
	}
	s.mu.Unlock()
	if !known {
		// Counted nowhere: no app of the fake's was named.
		switch {
		case corpid == "" || !corpKnown:
			writeJSON(w, errReply(40013, "invalid corpid"))
		default:
			writeJSON(w, errReply(40001, "invalid secret"))
		}
		return
	}
	s.serveFetch(w, r, key, func(a *app, now time.Time) map[string]any {
		if minute := now.Truncate(time.Minute); !a.minute.Equal(minute) {
			a.minute, a.inMin = minute, 0
		}
		if a.inMin++; a.inMin > s.cfg.WeComTokensPerMinute {
			return errReply(45009, "api freq out of limit")
		}
		if cur := a.current; cur != nil && !cur.dead && now.Before(cur.expiresAt) {
			return wecomTokenAnswer(cur, now)
		}
		s.serial++
		t := &issued{appid: key, value: s.mint(), expiresAt: now.Add(s.cfg.ExpiresIn), wecom: true}
		a.current = t
		a.issues++
		s.tokens[t.value] = t
		s.prune(now)
		return wecomTokenAnswer(t, now)
	})
}

// wecomTokenAnswer says expires_in 7200 (the token's lifetime) whenever it
// is answered: WeCom does not document the time left.
func wecomTokenAnswer(t *issued, _ time.Time) map[string]any {
	return map[string]any{"errcode": 0, "errmsg": "ok", "access_token": t.value, "expires_in": 7200}
}

// serveWeComTicket answers WeCom's /cgi-bin/get_jsapi_ticket (the corp's
// one ticket for wx.config, the same whichever of its apps asks; typ jsapi) and /cgi-bin/ticket/get?type=
// agent_config (the app's, for wx.agentConfig): the same ticket while it
// is valid, each call counted against WeCom's hourly limits, 100 per app
// and type and, for jsapi, 400 per corp.
func (s *Server) serveWeComTicket(w http.ResponseWriter, r *http.Request, typ string) {
	token := r.URL.Query().Get("access_token")
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t, st, refused := s.ticketCaller(token, typ, true, now)
	switch {
	case refused != nil:
		writeJSON(w, refused)
		return
	case typ != "jsapi" && typ != "agent_config":
		writeJSON(w, errReply(40097, ""))
		return
	}
	corp := s.app(t.appid).corpid
	hour := now.Add(-time.Hour)
	st.recent = within(st.recent, hour)
	if typ == "jsapi" {
		s.corpTickets[corp] = within(s.corpTickets[corp], hour)
		if len(s.corpTickets[corp]) >= s.cfg.WeComCorpTicketsPerHour {
			writeJSON(w, errReply(45009, "api freq out of limit"))
			return
		}
	}
	if len(st.recent) >= s.cfg.WeComTicketsPerHour {
		writeJSON(w, errReply(45009, "api freq out of limit"))
		return
	}
	st.recent = append(st.recent, now)
	holder := st // the app's agent_config ticket
	if typ == "jsapi" {
		s.corpTickets[corp] = append(s.corpTickets[corp], now)
		holder = s.ticketsOf(corpTicketHolder(corp), "jsapi") // one per corp, whichever app asks
	}
	writeJSON(w, s.ticketAnswer(holder, t.appid, now))
}

// corpTicketHolder names the fake's record of a corp's one jsapi ticket.
func corpTicketHolder(corpid string) string { return "corp " + corpid }

// within drops the times before since.
func within(times []time.Time, since time.Time) []time.Time {
	i := 0
	for i < len(times) && times[i].Before(since) {
		i++
	}
	return times[i:]
}
