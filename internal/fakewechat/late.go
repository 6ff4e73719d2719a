package fakewechat

import (
	"bytes"
	"net/http"
	"time"
)

// Late makes the next n answers on path (PathGetTicket, say) late by
// delay, as a slow network between WeChat and its caller does: WeChat
// does the call's work when it receives it (issues a ticket, counts the
// call), and the answer arrives delay later, or never if the caller gives
// up first (its timeout).
func (s *Server) Late(path string, n int, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.late == nil {
		s.late = map[string][]time.Duration{}
	}
	for range n {
		s.late[path] = append(s.late[path], delay)
	}
}

// takeLate returns the delay of the next answer on path, if Late set one.
func (s *Server) takeLate(path string) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delays := s.late[path]
	if len(delays) == 0 {
		return 0, false
	}
	s.late[path] = delays[1:]
	return delays[0], true
}

// answerLate does r's work now and sends its answer to w after delay,
// unless the caller is gone by then.
func (s *Server) answerLate(w http.ResponseWriter, r *http.Request, delay time.Duration) {
	held := &heldAnswer{header: http.Header{}, status: http.StatusOK}
	s.route(held, r)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-r.Context().Done():
		return
	}
	for k, v := range held.header {
		w.Header()[k] = v
	}
	w.WriteHeader(held.status)
	w.Write(held.body.Bytes())
}

// heldAnswer is an answer written but not sent yet.
type heldAnswer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (h *heldAnswer) Header() http.Header         { return h.header }
func (h *heldAnswer) WriteHeader(status int)      { h.status = status }
func (h *heldAnswer) Write(p []byte) (int, error) { return h.body.Write(p) }
