package fakewechat

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// clock is a settable time for the fake.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type answer struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	ErrCode     int    `json:"errcode"`
}

func stableCall(t *testing.T, s *Server, force bool) answer {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": "wxstable", "secret": "s", "force_refresh": force})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/cgi-bin/stable_token", bytes.NewReader(body)))
	var a answer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("answer %q: %v", rec.Body, err)
	}
	return a
}

func newStableFake() (*Server, *clock) {
	c := &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	s := New(Config{Now: c.Now})
	s.AddApp("wxstable", "s")
	return s, c
}

func TestStableNormalModeReturnsTheSameTokenWithTheTimeLeft(t *testing.T) {
	s, c := newStableFake()
	first := stableCall(t, s, false)
	if first.AccessToken == "" || first.ExpiresIn != 7200 {
		t.Fatalf("first call: %+v", first)
	}
	c.advance(6855 * time.Second)
	again := stableCall(t, s, false)
	if again.AccessToken != first.AccessToken || again.ExpiresIn != 345 {
		t.Fatalf("a call with 345 s left gave %+v, want the same token and 345", again)
	}
	if s.Issued("wxstable") != 1 {
		t.Fatalf("issued %d tokens, want 1", s.Issued("wxstable"))
	}
}

func TestStableRenewsInTheLastMinutesAndTheOldOneLivesOn(t *testing.T) {
	s, c := newStableFake()
	old := stableCall(t, s, false)
	c.advance(7200*time.Second - 4*time.Minute)
	renewed := stableCall(t, s, false)
	if renewed.AccessToken == old.AccessToken || renewed.ExpiresIn != 7200 {
		t.Fatalf("a call in the last 5 minutes gave %+v, want a new 7200 s token", renewed)
	}
	if ok, _ := s.Valid(old.AccessToken); !ok {
		t.Fatal("the old token stopped working when the new one was issued")
	}
	c.advance(4 * time.Minute)
	if ok, code := s.Valid(old.AccessToken); ok || code != 42001 {
		t.Fatalf("the old token after its expiry: ok %v, errcode %d; want 42001", ok, code)
	}
	if every := stableCall(t, s, false); every.ExpiresIn < 300 {
		t.Fatalf("expires_in %d, below the documented 300", every.ExpiresIn)
	}
}

func TestStableForcedRefreshEndsTheOldTokenWithinItsLimits(t *testing.T) {
	s, c := newStableFake()
	old := stableCall(t, s, false)
	forced := stableCall(t, s, true)
	if forced.AccessToken == old.AccessToken {
		t.Fatal("a forced refresh returned the same token")
	}
	if ok, code := s.Valid(old.AccessToken); ok || code != 40001 {
		t.Fatalf("the token a forced refresh replaced: ok %v, errcode %d; want 40001 at once", ok, code)
	}
	c.advance(10 * time.Second)
	if soon := stableCall(t, s, true); soon.AccessToken != forced.AccessToken {
		t.Fatal("a forced refresh 10 s after the last one refreshed")
	}
	for range 19 {
		c.advance(31 * time.Second)
		stableCall(t, s, true)
	}
	if s.Forced("wxstable") != 20 {
		t.Fatalf("forced %d, want 20", s.Forced("wxstable"))
	}
	c.advance(31 * time.Second)
	if over := stableCall(t, s, true); over.ErrCode != 45009 {
		t.Fatalf("the 21st forced refresh of the day: %+v, want errcode 45009", over)
	}
	c.advance(24 * time.Hour)
	if next := stableCall(t, s, true); next.ErrCode != 0 {
		t.Fatalf("a forced refresh the next day: %+v", next)
	}
}

func TestStableNeedsAPostAndIsApartFromClassicTokens(t *testing.T) {
	s, _ := newStableFake()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/cgi-bin/stable_token?grant_type=client_credential&appid=wxstable&secret=s", nil))
	var a answer
	json.Unmarshal(rec.Body.Bytes(), &a)
	if a.ErrCode != 43002 {
		t.Fatalf("GET: %+v, want 43002", a)
	}
	stable := stableCall(t, s, false)
	classic := s.Issue("wxstable")
	s.Issue("wxstable") // replaces the classic one
	if ok, _ := s.Valid(stable.AccessToken); !ok {
		t.Fatal("classic fetches ended the stable token")
	}
	stableCall(t, s, true)
	if ok, _ := s.Valid(classic); !ok {
		t.Fatal("a forced stable refresh ended the classic token")
	}
}

func TestStableReturnsARevokedTokenUntilForced(t *testing.T) {
	s, _ := newStableFake()
	tok := stableCall(t, s, false).AccessToken
	s.Revoke(tok)
	if ok, code := s.Valid(tok); ok || code != 40001 {
		t.Fatalf("revoked token: ok %v, errcode %d", ok, code)
	}
	if again := stableCall(t, s, false); again.AccessToken != tok {
		t.Fatal("normal mode replaced a revoked token; only a forced refresh may")
	}
	if forced := stableCall(t, s, true); forced.AccessToken == tok {
		t.Fatal("a forced refresh kept the revoked token")
	}
}
