package fakewechat

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/wxcrypt"
)

const (
	platformApp   = "wx0000000000000c0a"
	platformToken = "platform-message-token"
	platformKey   = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	authorizerApp = "wx00000000000a0001"
)

// callback is a platform's authorization-event URL, as a platform would
// write one: it checks and decrypts each push and keeps the events.
type callback struct {
	c      *wxcrypt.Crypter
	mu     sync.Mutex
	events []platformEvent
}

func (cb *callback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var envelope struct {
		Encrypt string `xml:"Encrypt"`
	}
	body, _ := io.ReadAll(r.Body)
	if err := xml.Unmarshal(body, &envelope); err != nil {
		http.Error(w, "not xml", http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	plain, err := cb.c.Open(q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce"), envelope.Encrypt)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ev platformEvent
	if err := xml.Unmarshal(plain, &ev); err != nil {
		http.Error(w, "not an event", http.StatusBadRequest)
		return
	}
	cb.mu.Lock()
	cb.events = append(cb.events, ev)
	cb.mu.Unlock()
	io.WriteString(w, "success")
}

// got returns the events received.
func (cb *callback) got() []platformEvent {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	return append([]platformEvent(nil), cb.events...)
}

func post(t *testing.T, base, path string, body any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(base+path, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return v
}

func TestOpenPlatformPushesTicketsAndRotatesRefreshTokens(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fake, clock := New(Config{}), &clock{now: time.Now()}
	fake.cfg.Now = clock.Now
	if err := fake.AddPlatform(platformApp, "component-secret", platformToken, platformKey); err != nil {
		t.Fatal(err)
	}
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	c, _ := wxcrypt.New(platformToken, platformKey, platformApp)
	cb := &callback{c: c}
	hook := httptest.NewServer(cb)
	defer hook.Close()

	tokenReq := map[string]string{"component_appid": platformApp, "component_appsecret": "component-secret"}
	if got := post(t, wechat.URL, PathComponentToken, tokenReq); got["errcode"] != float64(61006) {
		t.Errorf("a component token with no ticket = %v, want 61006", got)
	}
	ticket, answer, err := fake.PushTicket(ctx, hook.URL, platformApp)
	if events := cb.got(); err != nil || answer != "success" || len(events) != 1 || events[0].Ticket != ticket || events[0].InfoType != "component_verify_ticket" {
		t.Fatalf("push: %q %v, events %+v", answer, err, events)
	}
	tokenReq["component_verify_ticket"] = ticket
	component := post(t, wechat.URL, PathComponentToken, tokenReq)["component_access_token"].(string)

	if _, err := fake.Authorize(ctx, hook.URL, platformApp, authorizerApp); err != nil {
		t.Fatal(err)
	}
	code := cb.got()[1].Code
	auth := post(t, wechat.URL, PathQueryAuth+"?component_access_token="+component,
		map[string]string{"component_appid": platformApp, "authorization_code": code})["authorization_info"].(map[string]any)
	first := auth["authorizer_refresh_token"].(string)
	if ok, _ := fake.Valid(auth["authorizer_access_token"].(string)); !ok || auth["authorizer_appid"] != authorizerApp {
		t.Errorf("api_query_auth = %v, want the authorizer's working token", auth)
	}
	if again := post(t, wechat.URL, PathQueryAuth+"?component_access_token="+component,
		map[string]string{"component_appid": platformApp, "authorization_code": code}); again["errcode"] != float64(61010) {
		t.Errorf("a code exchanged twice = %v, want 61010", again)
	}

	refresh := func(token string) map[string]any {
		return post(t, wechat.URL, PathAuthorizerTok+"?component_access_token="+component,
			map[string]string{"component_appid": platformApp, "authorizer_appid": authorizerApp, "authorizer_refresh_token": token})
	}
	second := refresh(first)["authorizer_refresh_token"].(string)
	if second == first || fake.RefreshToken(platformApp, authorizerApp) != second {
		t.Errorf("a refresh gave the refresh token %q, want a new one", second)
	}
	// The answer with second may have been lost: first works until second
	// is used, and using it makes another one the newest.
	third := refresh(first)["authorizer_refresh_token"].(string)
	if third == second || fake.RefreshTokenWorks(platformApp, authorizerApp, second) || fake.RefreshSerial(third) <= fake.RefreshSerial(second) ||
		fake.LostRefreshes() != 1 {
		t.Errorf("a refresh with the token before the newest gave %q; the newest %q should stop working", third, second)
	}
	second = refresh(third)["authorizer_refresh_token"].(string)
	if got := refresh(first); got["errcode"] != float64(61023) {
		t.Errorf("the refresh token before the one used = %v, want 61023", got)
	}
	fake.Inject(authorizerApp, Fault{ErrCode: 61023})
	if got := refresh(second); got["errcode"] != float64(61023) {
		t.Errorf("an injected 61023 = %v", got)
	}
	if got := refresh(second); got["authorizer_access_token"] == nil {
		t.Errorf("after the injected fault: %v", got)
	}

	last := fake.RefreshToken(platformApp, authorizerApp)
	if _, err := fake.Unauthorize(ctx, hook.URL, platformApp, authorizerApp); err != nil || cb.got()[2].InfoType != "unauthorized" {
		t.Fatalf("unauthorize: %v %+v", err, cb.got())
	}
	if got := refresh(last); got["errcode"] != float64(61023) {
		t.Errorf("a refresh after unauthorized = %v, want 61023", got)
	}

	clock.advance(verifyTicketLifetime)
	delete(tokenReq, "component_verify_ticket")
	tokenReq["component_verify_ticket"] = ticket
	if got := post(t, wechat.URL, PathComponentToken, tokenReq); got["errcode"] != float64(61005) {
		t.Errorf("a component token with a ticket of 12 h ago = %v, want 61005", got)
	}
	if got := post(t, wechat.URL, PathStartPush, map[string]string{"component_appid": platformApp, "component_secret": "component-secret"}); got["errcode"] != float64(0) || fake.StartPushCalls(platformApp) != 1 {
		t.Errorf("api_start_push_ticket = %v", got)
	}
}
