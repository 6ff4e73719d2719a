package fakewechat

import "time"

// Adopt makes a token this fake issued in an earlier life its own again,
// as the app's current token (stable: its current stable_token), valid
// until expiresAt. WeChat does not forget a token when a client restarts;
// a fake that lives in the client's process (serve --demo) does, and would
// then call every token in the bucket dead, for another party to have
// ended. A token it already knows is left as it is.
func (s *Server) Adopt(appid, value string, expiresAt time.Time, stable bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, known := s.tokens[value]; known || value == "" {
		return
	}
	a := s.app(appid)
	t := &issued{appid: appid, value: value, expiresAt: expiresAt}
	s.tokens[value] = t
	if stable {
		a.stable = t
		return
	}
	if a.current != nil {
		a.current.replacedAt = s.cfg.Now()
	}
	a.current = t
}
