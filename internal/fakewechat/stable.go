package fakewechat

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// stableRequest is the JSON body of a stable_token call.
type stableRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

// serveStable answers /cgi-bin/stable_token: POST with a JSON body only.
func (s *Server) serveStable(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return
	}
	var req stableRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
		writeJSON(w, errReply(47001, ""))
		return
	}
	s.serveFetch(w, r, req.AppID, func(a *app, now time.Time) map[string]any {
		return s.stableReply(req, a, now)
	})
}

// stableReply decides a stable_token call the way WeChat documents it.
// Callers hold s.mu.
func (s *Server) stableReply(req stableRequest, a *app, now time.Time) map[string]any {
	if e := credentialError(req.AppID, req.Secret, req.GrantType, a); e != nil {
		return e
	}
	if spent := s.take(req.AppID, PathStableToken, now); spent != nil {
		return spent
	}
	cur := a.stable
	live := cur != nil && now.Before(cur.expiresAt)
	switch {
	case req.ForceRefresh:
		if live && !a.lastForce.IsZero() && now.Sub(a.lastForce) < s.cfg.ForceSpacing {
			// "否则不会刷新": too soon after the last one, nothing changes.
			return stableAnswer(cur, now)
		}
		if day := chinaDay(now); a.forceDay != day {
			a.forceDay, a.forceUsed = day, 0
		}
		// WeChat says 20 a day but not what the 21st answers; the
		// daily-limit errcode is the likeliest.
		if s.cfg.ForceLimit > 0 && a.forceUsed >= s.cfg.ForceLimit {
			return errReply(45009, "")
		}
		a.forceUsed++
		a.forced++
		a.lastForce = now
		if cur != nil {
			cur.dead = true // forced mode ends the previous token at once
		}
	case live && cur.expiresAt.Sub(now) > s.cfg.StableRenewBefore:
		// Normal mode within the token's life: the same token, with the
		// time it has left. A revoked one too: only a forced refresh
		// replaces it.
		return stableAnswer(cur, now)
	}
	// A new token: in the old one's last minutes (which it lives out,
	// both working meanwhile), after it expired, or forced.
	s.serial++
	t := &issued{appid: req.AppID, value: s.mint(), expiresAt: now.Add(s.cfg.ExpiresIn)}
	a.stable = t
	a.issues++
	s.tokens[t.value] = t
	s.prune(now)
	return stableAnswer(t, now)
}

// stableAnswer is a stable_token success: expires_in is the time t has
// left, in whole seconds.
func stableAnswer(t *issued, now time.Time) map[string]any {
	return map[string]any{"access_token": t.value, "expires_in": int(t.expiresAt.Sub(now) / time.Second)}
}
