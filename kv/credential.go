package kv

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Kinds of keys in the token bucket. A key is "<appid>" for an app's
// access_token, or "<appid>.<kind>" for what hangs off that token.
const (
	KindToken        = ""               // "<appid>": the access_token record (record)
	KindJSAPITicket  = "jsapi_ticket"   // "<appid>.jsapi_ticket": the JS-SDK ticket for wx.config (a ticket record)
	KindWxCardTicket = "wx_card_ticket" // "<appid>.wx_card_ticket": the card (卡券) api_ticket (a ticket record)
	// KindAgentConfigTicket is "<corpid>-<agent>.agent_config_ticket": a
	// WeCom app's ticket for wx.agentConfig (a ticket record). A WeCom key's
	// jsapi_ticket is the corp's ticket for wx.config.
	KindAgentConfigTicket = "agent_config_ticket"
)

// ticketKinds are the ticket kinds this version knows.
var ticketKinds = []string{KindJSAPITicket, KindWxCardTicket, KindAgentConfigTicket}

// WeComKey is the key of the token of a WeCom app secret: "<corpid>-<agent>",
// where agent is the agentid, or a name for a secret of no agent (such as
// "contacts"). WeChat appids have no "-", so the dash tells the two apart.
func WeComKey(corpid, agent string) string { return corpid + "-" + agent }

// SplitWeComKey returns the corp and agent of a key of a WeCom token, or
// of a ticket hanging off one; ok is false for an app's.
func SplitWeComKey(key string) (corpid, agent string, ok bool) {
	appid, _ := SplitKey(key)
	return strings.Cut(appid, "-")
}

// SplitKey returns the appid and the kind of key; kind is KindToken for a
// plain appid.
func SplitKey(key string) (appid, kind string) {
	appid, kind, _ = strings.Cut(key, ".")
	return appid, kind
}

// Key is the key of appid's credential of the given kind.
func Key(appid, kind string) string {
	if kind == KindToken {
		return appid
	}
	return appid + "." + kind
}

// isTicketKind reports whether kind is one of ticketKinds.
func isTicketKind(kind string) bool { return slices.Contains(ticketKinds, kind) }

// ValidateKey checks that key names a credential: an appid (see
// ValidateAppID), or an appid and a ticket kind joined by a dot.
func ValidateKey(key string) error {
	appid, kind, dotted := strings.Cut(key, ".")
	if err := ValidateAppID(appid); err != nil {
		return err
	}
	if dotted && !isTicketKind(kind) {
		return fmt.Errorf("key %.80q: %.32q is not a credential kind (%s)", key, kind, strings.Join(ticketKinds, ", "))
	}
	return nil
}

// Credential is what the record under any credential key holds, whatever
// its kind: the value a service uses (an access_token or a ticket) and
// its times. DecodeCredential reads it from a key's record, and
// EncodeCredential writes the record of its key's kind.
type Credential struct {
	Key       string
	Value     string
	ExpiresIn int64 // seconds, as WeChat said
	// FetchedAt is when the value was fetched; for a ticket, when the
	// value first appeared, since WeChat returns the same ticket, saying
	// 7200 s, for as long as it is valid.
	FetchedAt time.Time
	ExpiresAt time.Time
	Reason    string
	API       string // a token's record.API
}

// NewCredential builds the credential for a value fetched at fetchedAt
// that WeChat said lives for expiresIn, with the times cut to seconds as
// the token record does.
func NewCredential(key, value string, expiresIn time.Duration, fetchedAt time.Time) Credential {
	appid, _ := SplitKey(key)
	r := newRecord(appid, value, expiresIn, fetchedAt)
	return Credential{Key: key, Value: value, ExpiresIn: r.ExpiresIn, FetchedAt: r.FetchedAt, ExpiresAt: r.ExpiresAt}
}

// Lifetime is how long the value was issued for.
func (c Credential) Lifetime() time.Duration { return c.ExpiresAt.Sub(c.FetchedAt) }

// ValidAt reports whether the value has not expired at t.
func (c Credential) ValidAt(t time.Time) bool { return t.Before(c.ExpiresAt) }

// DecodeCredential decodes the record stored under key, of key's kind,
// and checks that it names key.
func DecodeCredential(key string, data []byte) (Credential, error) {
	if err := ValidateKey(key); err != nil {
		return Credential{}, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	appid, kind := SplitKey(key)
	switch {
	case kind == KindToken:
		r, err := decodeRecordFor(appid, data)
		if err != nil {
			return Credential{}, err
		}
		return Credential{Key: key, Value: r.AccessToken, ExpiresIn: r.ExpiresIn, FetchedAt: r.FetchedAt, ExpiresAt: r.ExpiresAt, Reason: r.Reason, API: r.API}, nil
	case isTicketKind(kind):
		t, err := decodeTicket(data)
		if err != nil {
			return Credential{}, err
		}
		if t.AppID != appid || t.Kind != kind {
			return Credential{}, fmt.Errorf("%w: ticket record names %q, stored under %q", ErrInvalidRecord, Key(t.AppID, t.Kind), key)
		}
		return Credential{Key: key, Value: t.Ticket, ExpiresIn: t.ExpiresIn, FetchedAt: t.FetchedAt, ExpiresAt: t.ExpiresAt, Reason: t.Reason}, nil
	}
	return Credential{}, fmt.Errorf("%w: no record of the kind %q", ErrInvalidRecord, kind)
}

// EncodeCredential validates c and returns the record of its key's kind.
func EncodeCredential(c Credential) ([]byte, error) {
	if err := ValidateKey(c.Key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	appid, kind := SplitKey(c.Key)
	if kind == KindToken {
		return encodeRecord(record{AppID: appid, AccessToken: c.Value, ExpiresIn: c.ExpiresIn, FetchedAt: c.FetchedAt, ExpiresAt: c.ExpiresAt, Reason: c.Reason, API: c.API})
	}
	return encodeTicket(ticketRecord{AppID: appid, Kind: kind, Ticket: c.Value, ExpiresIn: c.ExpiresIn, FetchedAt: c.FetchedAt, ExpiresAt: c.ExpiresAt, Reason: c.Reason})
}

// ticketRecord is the value stored under "<appid>.<kind>" for a ticket
// kind. Times are UTC and second-precise on the wire.
type ticketRecord struct {
	AppID     string    `json:"appid"` // the app whose access_token fetched it
	Kind      string    `json:"kind"`  // KindJSAPITicket or KindWxCardTicket
	Ticket    string    `json:"ticket"`
	ExpiresIn int64     `json:"expires_in"` // seconds, as WeChat said when it first appeared
	FetchedAt time.Time `json:"fetched_at"` // when this ticket value first appeared
	ExpiresAt time.Time `json:"expires_at"`
	Reason    string    `json:"reason,omitempty"`
}

// validate checks the ticket record against the contract: as a token
// record, with the ticket in place of the token and a known kind.
func (t ticketRecord) validate() error {
	if !isTicketKind(t.Kind) {
		return fmt.Errorf("%w: kind %.32q is not a ticket kind", ErrInvalidRecord, t.Kind)
	}
	if err := ValidateAppID(t.AppID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if err := ValidateToken(t.Ticket); err != nil {
		return fmt.Errorf("%w: ticket: %w", ErrInvalidRecord, err)
	}
	return validateTimes(t.ExpiresIn, t.FetchedAt, t.ExpiresAt)
}

// encodeTicket validates t and returns its JSON.
func encodeTicket(t ticketRecord) ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	t.FetchedAt, t.ExpiresAt = t.FetchedAt.UTC(), t.ExpiresAt.UTC()
	return json.Marshal(t)
}

// decodeTicket parses and validates a ticket record. Unknown fields are
// ignored.
func decodeTicket(data []byte) (ticketRecord, error) {
	if len(data) > MaxRecordSize {
		return ticketRecord{}, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidRecord, len(data), MaxRecordSize)
	}
	var t ticketRecord
	if err := json.Unmarshal(data, &t); err != nil {
		return ticketRecord{}, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if err := t.validate(); err != nil {
		return ticketRecord{}, err
	}
	return t, nil
}
