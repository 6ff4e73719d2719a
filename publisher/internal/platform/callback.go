// The callback: what WeChat's open platform pushes to a third-party
// platform's authorization-event URL, the component_verify_ticket every
// 10 minutes, and the authorized, updateauthorized and unauthorized events
// of its authorizers, checked and decrypted.

package platform

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/internal/wxcrypt"
)

// Event is one push, decrypted.
type Event struct {
	ComponentAppID string
	CreateTime     time.Time
	InfoType       string // InfoVerifyTicket, InfoAuthorized, ...
	Ticket         string // a verify ticket's
	Authorizer     string // an authorization event's authorizer appid
	Code           string // authorized and updateauthorized: the code api_query_auth exchanges
	CodeExpiresAt  time.Time
}

// InfoType values.
const (
	InfoVerifyTicket     = "component_verify_ticket"
	InfoAuthorized       = "authorized"
	InfoUpdateAuthorized = "updateauthorized"
	InfoUnauthorized     = "unauthorized"
)

// Callback limits.
const (
	maxBody = 64 << 10
	// skew is how far a push's timestamp may be from the clock: WeChat
	// sends it as it pushes; an older one is a replay.
	skew = 10 * time.Minute
	// replayTimeout bounds each use of the shared replay guard: WeChat
	// waits 5 s for the answer, and OnEvent needs most of them.
	replayTimeout = time.Second
)

// ReplayGuard remembers the pushes taken in, by msg_signature, for every
// replica, for as long as a push is fresh.
type ReplayGuard interface {
	// Taken reports whether a push of this signature was taken in.
	Taken(ctx context.Context, sig string) (bool, error)
	// Take records that the push of this signature was taken in.
	Take(ctx context.Context, sig, componentAppID string) error
}

// Callback is the http.Handler of the authorization-event URL. It checks
// msg_signature, decrypts the push, checks that it is for the platform it
// names, hands it to OnEvent and replies "success". What is not a fresh,
// genuine push of a configured platform gets a 4xx and reaches no one.
// Until Ready says it can take pushes, a push is answered 503 (WeChat
// pushes it again later); a GET or HEAD answers Ready itself, 200 or 503,
// for a load balancer's health check.
//
// A replay is refused by the replica that took the push in, and, through
// Replays, by every other. Replays failing does not refuse a push: the
// replica's own guard still holds, and OnEvent must be idempotent anyway
// (storing a ticket only when it is newer is), since two replicas may take
// the same push at the same moment.
type Callback struct {
	// Ready says why pushes cannot be taken in yet, or nil. Nil: always
	// ready.
	Ready func() error
	// Crypter returns the crypter of the platform of a component appid,
	// or nil if there is no such platform here.
	Crypter func(componentAppID string) *wxcrypt.Crypter
	// OnEvent takes a push in. An error answers 500, and WeChat pushes
	// again later.
	OnEvent func(context.Context, Event) error
	// Replays, if set, remembers the pushes taken in for every replica.
	Replays ReplayGuard
	Logger  *slog.Logger
	Now     func() time.Time // time.Now

	mu   sync.Mutex
	seen map[string]time.Time // msg_signatures of the pushes taken in, to when they stop being fresh
}

func (c *Callback) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Callback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
	case http.MethodGet, http.MethodHead:
		c.serveHealth(w)
		return
	default:
		w.Header().Set("Allow", "POST, GET, HEAD")
		http.Error(w, "POST for WeChat's pushes; GET for the health check", http.StatusMethodNotAllowed)
		return
	}
	if err := c.notReady(); err != nil {
		c.logger().Warn("push refused: not ready to take pushes in yet; WeChat pushes again", "error", err)
		w.Header().Set("Retry-After", retryAfter)
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	ev, status, err := c.read(w, r)
	if err != nil {
		c.logger().Warn("push refused", "status", status, "error", err)
		http.Error(w, err.Error(), status)
		return
	}
	sig := r.URL.Query().Get("msg_signature")
	if err := c.OnEvent(r.Context(), ev); err != nil {
		c.forget(sig) // WeChat's next push of it is taken
		c.logger().Error("push not taken in", "component_appid", ev.ComponentAppID, "info_type", ev.InfoType, "error", err)
		http.Error(w, "not taken in; push again", http.StatusInternalServerError)
		return
	}
	c.remember(r.Context(), sig, ev.ComponentAppID)
	io.WriteString(w, "success")
}

// takenElsewhere reports whether another replica took the push in, as far
// as the shared guard knows: when it cannot say, the push is taken.
func (c *Callback) takenElsewhere(ctx context.Context, sig string) bool {
	if c.Replays == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	taken, err := c.Replays.Taken(ctx, sig)
	if err != nil {
		c.logger().Warn("the replay guard the replicas share cannot be read; only this replica's own refuses replays", "error", err)
	}
	return taken
}

// remember records in the shared guard a push taken in. A failure leaves
// only this replica's own guard to refuse its replays.
func (c *Callback) remember(ctx context.Context, sig, component string) {
	if c.Replays == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replayTimeout)
	defer cancel()
	if err := c.Replays.Take(ctx, sig, component); err != nil {
		c.logger().Warn("cannot record the push in the replay guard the replicas share; only this replica's own refuses its replays",
			"component_appid", component, "error", err)
	}
}

// retryAfter is the Retry-After of a 503: start-up takes seconds.
const retryAfter = "5"

func (c *Callback) notReady() error {
	if c.Ready == nil {
		return nil
	}
	return c.Ready()
}

// serveHealth answers a health check: 200 once pushes can be taken in.
func (c *Callback) serveHealth(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	if err := c.notReady(); err != nil {
		w.Header().Set("Retry-After", retryAfter)
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ready\n")
}

func (c *Callback) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// read checks and decrypts a push.
func (c *Callback) read(w http.ResponseWriter, r *http.Request) (Event, int, error) {
	q := r.URL.Query()
	sig, timestamp, nonce := q.Get("msg_signature"), q.Get("timestamp"), q.Get("nonce")
	if sig == "" || timestamp == "" || nonce == "" {
		return Event{}, http.StatusBadRequest, errors.New("msg_signature, timestamp and nonce are required")
	}
	sent, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return Event{}, http.StatusBadRequest, errors.New("timestamp: seconds")
	}
	if err := checkFresh(time.Unix(sent, 0), c.now()); err != nil {
		return Event{}, http.StatusBadRequest, err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return Event{}, http.StatusRequestEntityTooLarge, fmt.Errorf("the body is over %d bytes, or did not arrive", maxBody)
	}
	var envelope struct {
		AppID   string `xml:"AppId"`
		Encrypt string `xml:"Encrypt"`
	}
	if err := xml.Unmarshal(body, &envelope); err != nil || envelope.Encrypt == "" {
		return Event{}, http.StatusBadRequest, errors.New("not an encrypted push")
	}
	crypter := c.Crypter(envelope.AppID)
	if crypter == nil {
		return Event{}, http.StatusNotFound, fmt.Errorf("no platform %.40q here", envelope.AppID)
	}
	plain, err := crypter.Open(sig, timestamp, nonce, envelope.Encrypt)
	if err != nil {
		return Event{}, http.StatusBadRequest, err
	}
	if !c.fresh(sig, time.Unix(sent, 0).Add(skew)) {
		return Event{}, http.StatusConflict, errors.New("a replay of a push taken in")
	}
	if c.takenElsewhere(r.Context(), sig) {
		return Event{}, http.StatusConflict, errors.New("a replay of a push another replica took in")
	}
	var msg struct {
		AppID      string `xml:"AppId"`
		CreateTime int64  `xml:"CreateTime"`
		InfoType   string `xml:"InfoType"`
		Ticket     string `xml:"ComponentVerifyTicket"`
		Authorizer string `xml:"AuthorizerAppid"`
		Code       string `xml:"AuthorizationCode"`
		CodeExpiry int64  `xml:"AuthorizationCodeExpiredTime"`
	}
	if err := xml.Unmarshal(plain, &msg); err != nil {
		return Event{}, http.StatusBadRequest, errors.New("the decrypted push is not XML")
	}
	if msg.AppID != envelope.AppID {
		return Event{}, http.StatusBadRequest, errors.New("the decrypted push names another platform")
	}
	ev := Event{ComponentAppID: msg.AppID, CreateTime: time.Unix(msg.CreateTime, 0), InfoType: msg.InfoType,
		Ticket: msg.Ticket, Authorizer: msg.Authorizer, Code: msg.Code, CodeExpiresAt: time.Unix(msg.CodeExpiry, 0)}
	switch {
	case ev.InfoType == InfoVerifyTicket && ev.Ticket == "":
		return Event{}, http.StatusBadRequest, errors.New("a verify ticket push with no ticket")
	case (ev.InfoType == InfoAuthorized || ev.InfoType == InfoUpdateAuthorized || ev.InfoType == InfoUnauthorized) && ev.Authorizer == "":
		return Event{}, http.StatusBadRequest, errors.New("an authorization event with no authorizer")
	}
	return ev, http.StatusOK, nil
}

// checkFresh refuses a push sent further than skew from now, saying when
// it was sent and how far off that is: a replay is old, a clock that is
// wrong makes every push look old or in the future.
func checkFresh(sent, now time.Time) error {
	within := fmt.Sprintf("WeChat's pushes are within %d minutes", int(skew.Minutes()))
	switch d := now.Sub(sent); {
	case d > skew:
		return fmt.Errorf("timestamp %s is %s old; %s", sent.UTC().Format(time.RFC3339), age(d), within)
	case d < -skew:
		return fmt.Errorf("timestamp %s is %s in the future; %s (is this server's clock right?)", sent.UTC().Format(time.RFC3339), age(-d), within)
	}
	return nil
}

// age says a duration the way a person would: in years or days when it is
// that long, to the second otherwise.
func age(d time.Duration) string {
	const day, year = 24 * time.Hour, 365 * 24 * time.Hour
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d >= year:
		return plural(int64(d/year), "year")
	case d >= 2*day:
		return plural(int64(d/day), "day")
	}
	return d.Round(time.Second).String()
}

// fresh records a push's signature until it stops being fresh, and
// reports whether it is new.
func (c *Callback) fresh(sig string, until time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.seen == nil {
		c.seen = map[string]time.Time{}
	}
	for s, end := range c.seen {
		if now.After(end) {
			delete(c.seen, s)
		}
	}
	if _, ok := c.seen[sig]; ok {
		return false
	}
	c.seen[sig] = until
	return true
}

func (c *Callback) forget(sig string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, sig)
}
