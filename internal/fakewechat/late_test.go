package fakewechat

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestALateAnswerIsIssuedWhenAskedAndSentLater: a getticket call made late
// issues its ticket when WeChat receives it; a caller that gives up first
// gets no answer, and its next call gets the ticket the lost answer held.
func TestALateAnswerIsIssuedWhenAskedAndSentLater(t *testing.T) {
	s := New(Config{Overlap: -1})
	s.AddApp("wx1", "s")
	srv := httptest.NewServer(s)
	defer srv.Close()
	token := s.Issue("wx1")
	s.Late(PathGetTicket, 1, time.Minute)
	ask := func(timeout time.Duration) (ticketAnswer, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+PathGetTicket+"?type=jsapi&access_token="+token, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return ticketAnswer{}, err
		}
		defer resp.Body.Close()
		var a ticketAnswer
		return a, json.NewDecoder(resp.Body).Decode(&a)
	}
	if _, err := ask(200 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a late answer: %v, want the caller's timeout", err)
	}
	issued, valid := s.Ticket("wx1", "jsapi")
	if issued == "" || !valid {
		t.Fatal("the call whose answer was late issued no ticket")
	}
	next, err := ask(5 * time.Second)
	if err != nil || next.Ticket != issued || next.ExpiresIn != 7200 {
		t.Fatalf("the next call: %+v (%v), want the ticket the late answer held, saying 7200", next, err)
	}
	if calls, n, _ := s.TicketCalls("wx1", "jsapi"); calls != 2 || n != 1 {
		t.Fatalf("%d calls issued %d tickets, want 2 and 1", calls, n)
	}
}
