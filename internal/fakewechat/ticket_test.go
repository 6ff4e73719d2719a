package fakewechat

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type ticketAnswer struct {
	Ticket    string `json:"ticket"`
	ExpiresIn int    `json:"expires_in"`
	ErrCode   int    `json:"errcode"`
}

func getTicket(t *testing.T, s *Server, token, typ string) ticketAnswer {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/cgi-bin/ticket/getticket?access_token="+token+"&type="+typ, nil))
	var a ticketAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestTicketIsTheSameWhileValidWhateverTokenAsks(t *testing.T) {
	c := &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	s := New(Config{Now: c.Now, Overlap: -1})
	s.AddApp("wx1", "s")
	first := getTicket(t, s, s.Issue("wx1"), "jsapi")
	if first.Ticket == "" || first.ExpiresIn != 7200 {
		t.Fatalf("first: %+v", first)
	}
	c.advance(7000 * time.Second)
	again := getTicket(t, s, s.Issue("wx1"), "jsapi") // a new token
	if again.Ticket != first.Ticket || again.ExpiresIn != 7200 {
		t.Fatalf("200 s before expiry, with a new token: %+v, want the same ticket saying 7200", again)
	}
	if card := getTicket(t, s, s.Current("wx1"), "wx_card"); card.Ticket == "" || card.Ticket == first.Ticket {
		t.Fatalf("wx_card ticket %+v: want one of its own", card)
	}
	c.advance(200 * time.Second)
	if next := getTicket(t, s, s.Current("wx1"), "jsapi"); next.Ticket == first.Ticket {
		t.Fatal("the same ticket after its expiry")
	}
	calls, issued, dead := s.TicketCalls("wx1", "jsapi")
	if calls != 3 || issued != 2 || dead != 0 {
		t.Fatalf("calls %d issued %d dead %d, want 3 2 0", calls, issued, dead)
	}
}

func TestTicketWithADeadTokenIsRefused(t *testing.T) {
	s := New(Config{Overlap: -1})
	s.AddApp("wx1", "s")
	old := s.Issue("wx1")
	s.Issue("wx1") // ends old at once
	if a := getTicket(t, s, old, "jsapi"); a.ErrCode != 40001 {
		t.Fatalf("with a dead token: %+v, want 40001", a)
	}
	if a := getTicket(t, s, s.Current("wx1"), "other"); a.ErrCode != 40097 {
		t.Fatalf("unknown type: %+v, want 40097", a)
	}
	if _, _, dead := s.TicketCalls("wx1", "jsapi"); dead != 1 {
		t.Fatalf("%d calls with a dead token counted, want 1", dead)
	}
}
