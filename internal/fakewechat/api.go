package fakewechat

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
)

// The business APIs the fake answers, besides the token APIs: enough to
// call WeChat through a proxy and see what arrived. Each checks its
// access_token as WeChat does (40001, 40014, 42001, 41001) and counts the
// calls by path.
const (
	PathSendMessage = "/cgi-bin/message/custom/send" // POST JSON: {"errcode":0,"errmsg":"ok"}
	PathUserList    = "/cgi-bin/user/get"            // GET: followers, one page
	PathUploadMedia = "/cgi-bin/media/upload"        // POST a file (multipart): a media_id
)

// APICall is what the fake saw of the last call to a business API.
type APICall struct {
	Token      string
	BodySHA256 string // hex of the body as received
	BodyLen    int64
	Header     http.Header
}

type apiState struct {
	ok, rejected int
	last         APICall
	sticky       *Fault
}

// FailAPI answers every call to a business API path with f until HealAPI:
// f.Delay hangs it, f.Body answers garbage, f.Status another status.
func (s *Server) FailAPI(path string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.api(path).sticky = &f
}

// HealAPI ends FailAPI.
func (s *Server) HealAPI(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.api(path).sticky = nil
}

// APICalls is the number of calls to path that a valid token made, and of
// those refused for their token.
func (s *Server) APICalls(path string) (ok, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.api(path)
	return a.ok, a.rejected
}

// LastAPICall is the last call to path that a valid token made.
func (s *Server) LastAPICall(path string) APICall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.api(path).last
}

// api returns path's state. Callers hold s.mu.
func (s *Server) api(path string) *apiState {
	a, ok := s.apis[path]
	if !ok {
		a = &apiState{}
		s.apis[path] = a
	}
	return a
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	sticky := s.api(r.URL.Path).sticky
	s.mu.Unlock()
	if sticky != nil {
		serveFault(w, r, *sticky)
		return
	}
	if r.URL.Path != PathUserList && r.Method != http.MethodPost {
		writeJSON(w, errReply(43002, ""))
		return
	}
	// WeChat reads the whole request before it answers.
	sum := sha256.New()
	n, err := io.Copy(sum, r.Body)
	if err != nil {
		return
	}
	token := r.URL.Query().Get("access_token")
	s.mu.Lock()
	a := s.api(r.URL.Path)
	now := s.cfg.Now()
	ok, code := s.valid(token, now)
	var spent map[string]any
	if ok {
		spent = s.take(s.tokens[token].appid, r.URL.Path, now)
	}
	if spent != nil {
		s.mu.Unlock()
		writeJSON(w, spent)
		return
	}
	if ok {
		a.ok++
		a.last = APICall{Token: token, BodySHA256: hex.EncodeToString(sum.Sum(nil)), BodyLen: n, Header: r.Header.Clone()}
	} else {
		a.rejected++
	}
	s.mu.Unlock()
	if !ok {
		writeJSON(w, errReply(code, ""))
		return
	}
	switch r.URL.Path {
	case PathSendMessage:
		if n == 0 {
			writeJSON(w, errReply(44002, ""))
			return
		}
		writeJSON(w, map[string]any{"errcode": 0, "errmsg": "ok"})
	case PathUserList:
		writeJSON(w, map[string]any{"total": 2, "count": 2,
			"data": map[string]any{"openid": []string{"oFAKE0000000000000000000001", "oFAKE0000000000000000000002"}}, "next_openid": "oFAKE0000000000000000000002"})
	case PathUploadMedia:
		writeJSON(w, map[string]any{"type": r.URL.Query().Get("type"),
			"media_id": "MEDIA_" + strconv.FormatInt(n, 10), "created_at": s.cfg.Now().Unix()})
	}
}
