package platform

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/wxcrypt"
)

const (
	platformApp = "wx0000000000000c0a"
	token       = "platform-message-token"
	aesKey      = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
)

// recorder keeps the last push it passed to the callback, to send again.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	url  string
	body string
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.url, rec.body = r.URL.String(), string(b)
	rec.mu.Unlock()
	r.Body = io.NopCloser(strings.NewReader(string(b)))
	rec.next.ServeHTTP(w, r)
}

func (rec *recorder) last() (string, string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.url, rec.body
}

func send(t *testing.T, base, pathAndQuery, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(base+pathAndQuery, "text/xml", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCallbackTakesGenuinePushesAndRefusesTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	if err := fake.AddPlatform(platformApp, "secret", token, aesKey); err != nil {
		t.Fatal(err)
	}
	crypter, _ := wxcrypt.New(token, aesKey, platformApp)
	var mu sync.Mutex
	var events []Event
	fail := false
	cb := &Callback{Crypter: func(appid string) *wxcrypt.Crypter { return map[string]*wxcrypt.Crypter{platformApp: crypter}[appid] }, OnEvent: func(_ context.Context, ev Event) error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return errors.New("the bucket is away")
		}
		events = append(events, ev)
		return nil
	}}
	rec := &recorder{next: cb}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	got := func() []Event {
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), events...)
	}

	ticket, answer, err := fake.PushTicket(ctx, srv.URL+"/wechat/callback", platformApp)
	if err != nil || answer != "success" {
		t.Fatalf("a genuine push: %q %v", answer, err)
	}
	if ev := got(); len(ev) != 1 || ev[0].InfoType != InfoVerifyTicket || ev[0].Ticket != ticket || ev[0].ComponentAppID != platformApp {
		t.Fatalf("events %+v, want the ticket", ev)
	}
	pushURL, pushBody := rec.last()
	u, _ := url.Parse(pushURL)
	q := u.Query()

	for _, tc := range []struct {
		name   string
		query  func(url.Values)
		body   string
		status int
	}{
		{"a replay", nil, pushBody, http.StatusConflict},
		{"a wrong signature", func(q url.Values) { q.Set("msg_signature", strings.Repeat("0", 40)) }, pushBody, http.StatusBadRequest},
		{"no signature", func(q url.Values) { q.Del("msg_signature") }, pushBody, http.StatusBadRequest},
		{"another nonce", func(q url.Values) { q.Set("nonce", "1") }, pushBody, http.StatusBadRequest},
		{"garbage", nil, "<<<not xml", http.StatusBadRequest},
		{"a body of 1 MiB", nil, "<xml>" + strings.Repeat("a", 1<<20) + "</xml>", http.StatusRequestEntityTooLarge},
		{"another platform", nil, strings.Replace(pushBody, platformApp, "wx00000000000000ff", 1), http.StatusNotFound},
		{"an old timestamp", func(q url.Values) { q.Set("timestamp", "1409304348") }, pushBody, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q2 := url.Values{}
			for k, v := range q {
				q2[k] = v
			}
			if tc.query != nil {
				tc.query(q2)
			}
			if status, body := send(t, srv.URL, u.Path+"?"+q2.Encode(), tc.body); status != tc.status {
				t.Errorf("%s = %d %q, want %d", tc.name, status, body, tc.status)
			}
		})
	}
	if ev := got(); len(ev) != 1 {
		t.Errorf("the refused pushes reached OnEvent: %+v", ev[1:])
	}

	// A push OnEvent could not take in answers 500, and is taken when
	// WeChat pushes it again.
	mu.Lock()
	fail = true
	mu.Unlock()
	if _, err := fake.Authorize(ctx, srv.URL+"/wechat/callback", platformApp, "wx00000000000a0001"); err == nil {
		t.Fatal("a push OnEvent refused was answered with success")
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	pushURL, pushBody = rec.last()
	u, _ = url.Parse(pushURL)
	if status, _ := send(t, srv.URL, u.RequestURI(), pushBody); status != http.StatusOK {
		t.Errorf("the push again = %d, want it taken", status)
	}
	if ev := got(); len(ev) != 2 || ev[1].InfoType != InfoAuthorized || ev[1].Authorizer != "wx00000000000a0001" || ev[1].Code == "" {
		t.Errorf("events %+v, want the authorization with its code", ev)
	}
	if _, err := fake.Unauthorize(ctx, srv.URL+"/wechat/callback", platformApp, "wx00000000000a0001"); err != nil {
		t.Fatal(err)
	}
	if ev := got(); len(ev) != 3 || ev[2].InfoType != InfoUnauthorized {
		t.Errorf("events %+v, want the withdrawal", ev)
	}
	for method, want := range map[string]int{http.MethodGet: http.StatusOK, http.MethodPut: http.StatusMethodNotAllowed} {
		req, _ := http.NewRequest(method, srv.URL+"/wechat/callback", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s = %d, want %d", method, resp.StatusCode, want)
		}
	}
}

// TestStaleTimestampSaysHowFarOff: a push whose timestamp is far from the
// clock is refused with the time it names and how far off that is, in
// words an operator reads at a glance, past or future.
func TestStaleTimestampSaysHowFarOff(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	cb := &Callback{Now: func() time.Time { return now },
		Crypter: func(string) *wxcrypt.Crypter { return nil },
		OnEvent: func(context.Context, Event) error { return nil }}
	srv := httptest.NewServer(cb)
	defer srv.Close()
	for _, tc := range []struct {
		sent time.Time
		want string
	}{
		{time.Unix(0, 0), "timestamp 1970-01-01T00:00:00Z is 56 years old; WeChat's pushes are within 10 minutes"},
		{now.Add(-400 * 24 * time.Hour), "timestamp 2025-10-27T08:00:00Z is 1 year old; WeChat's pushes are within 10 minutes"},
		{now.Add(-3*24*time.Hour - time.Hour), "timestamp 2026-11-28T07:00:00Z is 3 days old; WeChat's pushes are within 10 minutes"},
		{now.Add(-2*time.Hour - 3*time.Second), "timestamp 2026-12-01T05:59:57Z is 2h0m3s old; WeChat's pushes are within 10 minutes"},
		{now.Add(15 * time.Minute), "timestamp 2026-12-01T08:15:00Z is 15m0s in the future; WeChat's pushes are within 10 minutes (is this server's clock right?)"},
	} {
		query := "/?msg_signature=x&nonce=1&timestamp=" + strconv.FormatInt(tc.sent.Unix(), 10)
		status, body := send(t, srv.URL, query, "<xml/>")
		if status != http.StatusBadRequest || strings.TrimSpace(body) != tc.want {
			t.Errorf("timestamp %s: %d %q, want 400 %q", tc.sent, status, body, tc.want)
		}
	}
}
