package fakewechat

import (
	"fmt"
	"net"
	"net/http"
	"sync"
)

// Outage is how a Domain fails as a whole.
type Outage int

const (
	// Working: the domain answers as WeChat does.
	Working Outage = iota
	// Refused: nothing listens; connections are refused.
	Refused
	// ServerError: every call gets HTTP 502 and an HTML page, as from a
	// gateway in front of a WeChat in trouble.
	ServerError
	// Busy: every call gets {"errcode":-1,"errmsg":"system error"}.
	Busy
	// Hang: calls get no answer until the client gives up. The call
	// never reaches WeChat: no token is issued.
	Hang
)

func (o Outage) String() string {
	switch o {
	case Working:
		return "working"
	case Refused:
		return "refused"
	case ServerError:
		return "HTTP 502"
	case Busy:
		return "errcode -1"
	case Hang:
		return "hang"
	}
	return fmt.Sprintf("Outage(%d)", int(o))
}

// Domain is one of WeChat's API domains (api.weixin.qq.com,
// api2.weixin.qq.com) in front of the fake: a listener of its own over the
// same state, so a token issued through one works through the other, as at
// WeChat, and the quota and the counters are the app's, whichever domain
// was called. A Domain can be made to fail as a whole (Fail) and healed.
type Domain struct {
	s    *Server
	addr string // host:port, kept across a Refused outage
	// URL is the domain's base URL, http://host:port.
	URL string

	mu       sync.Mutex
	srv      *http.Server // nil during a Refused outage
	outage   Outage
	answered int // calls that reached WeChat's state
	failed   int // calls answered with the outage
}

// ServeDomain serves the fake as one more domain on addr, such as
// "127.0.0.1:0". Close it when done.
func (s *Server) ServeDomain(addr string) (*Domain, error) {
	d := &Domain{s: s}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fakewechat: domain: %w", err)
	}
	d.addr = ln.Addr().String()
	d.URL = "http://" + d.addr
	d.serve(ln)
	return d, nil
}

// serve starts answering on ln. Callers hold d.mu, or own d alone.
func (d *Domain) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(d.answer)}
	d.srv = srv
	go srv.Serve(ln)
}

// Fail makes the domain fail as o says until Heal. Refused closes the
// listener and every connection open on it.
func (d *Domain) Fail(o Outage) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outage = o
	if o == Refused && d.srv != nil {
		d.srv.Close()
		d.srv = nil
	}
}

// Heal ends the outage: the domain answers as WeChat again, listening
// again on its address after Refused.
func (d *Domain) Heal() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outage = Working
	if d.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", d.addr)
	if err != nil {
		return fmt.Errorf("fakewechat: domain %s cannot listen again: %w", d.addr, err)
	}
	d.serve(ln)
	return nil
}

// Answered is the number of calls that reached WeChat through the domain
// (token fetches, checks, API calls), whatever WeChat answered.
func (d *Domain) Answered() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.answered
}

// Failed is the number of calls the domain failed (ServerError, Busy,
// Hang); refused connections are not seen.
func (d *Domain) Failed() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

// Close stops the domain.
func (d *Domain) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.srv != nil {
		d.srv.Close()
		d.srv = nil
	}
}

func (d *Domain) answer(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	outage := d.outage
	if outage == Working {
		d.answered++
	} else {
		d.failed++
	}
	d.mu.Unlock()
	switch outage {
	case ServerError:
		serveFault(w, r, Fault{Status: http.StatusBadGateway})
	case Busy:
		writeJSON(w, errReply(-1, ""))
	case Hang:
		<-r.Context().Done()
	default:
		d.s.ServeHTTP(w, r)
	}
}

// IssuedAndCurrent is Issued and Current read at one instant: a test that
// sees current stored by the refresher knows that issued counts every
// token of appid's up to it, and none fetched since.
func (s *Server) IssuedAndCurrent(appid string) (issued int, current string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.app(appid)
	if a.current != nil {
		current = a.current.value
	}
	return a.issues, current
}
