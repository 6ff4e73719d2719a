package fakewechat

import (
	"fmt"
	"math/rand/v2"
)

// What an operator does to an AppSecret in WeChat's console, which no API
// does (WECHAT.md §8): reset it, freeze it, unfreeze it.
//
// A reset ends the old secret at once ("旧的 AppSecret 将立即失效"): every
// call that carries it (/cgi-bin/token, stable_token, the login
// exchanges, a platform's component calls, WeCom's gettoken) is refused with 40125 (WeCom: 40001,
// its wrong-secret errcode) from that moment. The tokens issued before it
// keep working until they expire or are replaced: WeChat documents
// nothing else (a mini-game notice speaks of "几分钟过渡期" for the
// secret, nothing about tokens), so the fake ends none; a test that wants
// one dead says so with Revoke or Reject.

// ResetSecret gives the app, WeCom app ("<corpid>-<agent>") or platform
// (component appid) named by key a new secret and returns it; the old one
// is refused at once. It is an error for a key the fake does not know.
func (s *Server) ResetSecret(key string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	secret := newSecret()
	if p, ok := s.platforms[key]; ok {
		p.secret = secret
		return secret, nil
	}
	a, ok := s.apps[key]
	if !ok || a.secret == "" {
		return "", fmt.Errorf("fakewechat: no app %q", key)
	}
	if a.corpid != "" {
		for k, v := range s.wecom {
			if v == key {
				delete(s.wecom, k)
			}
		}
		s.wecom[a.corpid+" "+secret] = key
	}
	a.secret = secret
	return secret, nil
}

// Freeze freezes the app's secret: its token calls (/cgi-bin/token,
// stable_token) and login exchanges (jscode2session, oauth2/access_token)
// get 40243 until Unfreeze, with the right secret; a wrong
// one still gets 40125. WeChat takes about 10 minutes to freeze or
// unfreeze; the fake does it at once.
func (s *Server) Freeze(appid string) error { return s.setFrozen(appid, true) }

// Unfreeze ends Freeze: the same secret works again.
func (s *Server) Unfreeze(appid string) error { return s.setFrozen(appid, false) }

func (s *Server) setFrozen(appid string, frozen bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[appid]
	if !ok || a.secret == "" {
		return fmt.Errorf("fakewechat: no app %q", appid)
	}
	a.frozen = frozen
	return nil
}

// newSecret is a new 32-hex-digit AppSecret, as WeChat issues them.
func newSecret() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 32)
	for i := range b {
		b[i] = hex[rand.IntN(len(hex))]
	}
	return string(b)
}
