package kv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ServiceName is the name of the refresh endpoint's NATS micro service, as
// `nats micro ls` shows it: a leader serves it for its whole term, with
// the metadata "bucket" naming its token bucket.
const ServiceName = "wxtoken"

// DefaultSubjectPrefix prefixes every subject wxtoken uses.
const DefaultSubjectPrefix = "wechat.token"

// Subjects names the NATS subjects of one deployment. The zero value uses
// DefaultSubjectPrefix.
type Subjects struct {
	Prefix string
}

func (s Subjects) prefix() string {
	if s.Prefix == "" {
		return DefaultSubjectPrefix
	}
	return s.Prefix
}

// Rotated is where the rotation event of appid is published; "*" matches all apps.
func (s Subjects) Rotated(appid string) string { return s.prefix() + ".rotated." + appid }

// Refresh is the request-reply subject of appid's refresh endpoint.
func (s Subjects) Refresh(appid string) string { return s.prefix() + ".refresh." + appid }

// Failed is where the failure events of appid are published.
func (s Subjects) Failed(appid string) string { return s.prefix() + ".failed." + appid }

// Value is where the refresher publishes each value stored under appid's
// key, as soon as it is stored: the token record itself, so subscribe
// permissions on it must match read permissions on the bucket. ">" matches
// every key.
func (s Subjects) Value(appid string) string { return s.prefix() + ".value." + appid }

// ValidateSubjectPrefix checks that prefix is a literal subject (dot-separated
// tokens without wildcards or whitespace).
func ValidateSubjectPrefix(prefix string) error {
	if prefix == "" {
		return errors.New("kv: subject prefix is empty")
	}
	for tok := range strings.SplitSeq(prefix, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n*>") {
			return fmt.Errorf("kv: subject prefix %q is not a literal NATS subject", prefix)
		}
	}
	return nil
}

// Rotation reasons carried by RotationEvent.Reason.
const (
	ReasonInitial   = "initial"   // there was no token in the bucket
	ReasonScheduled = "scheduled" // the token entered its refresh window
	ReasonRequested = "requested" // a service asked through the refresh endpoint
)

// RotationEvent is published after a new token was written. It carries no
// token: the token lives only in the bucket, behind permissions.
type RotationEvent struct {
	AppID string `json:"appid"`
	// Kind is the key's kind for what hangs off the app's token
	// (KindJSAPITicket, ...); empty, and absent on the wire, for the token.
	Kind      string    `json:"kind,omitempty"`
	Revision  uint64    `json:"revision"`
	FetchedAt time.Time `json:"fetched_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Reason    string    `json:"reason"`
}

// FailureEvent is published when a fetch fails with a configuration or quota
// error, the errors a human has to act on or wait out.
type FailureEvent struct {
	AppID       string    `json:"appid"`
	Kind        string    `json:"kind,omitempty"` // as RotationEvent's
	ErrCode     int       `json:"errcode"`
	ErrMsg      string    `json:"errmsg"`
	Class       string    `json:"class"` // config, quota or retry; or ClassInvalidatedElsewhere, ClassForeignFetch
	NextAttempt time.Time `json:"next_attempt"`

	// What an invalidated_elsewhere event adds: when WeChat said the token
	// was dead, its revision, its expiry, and how long before it it died.
	At                  time.Time `json:"at,omitzero"`
	Revision            uint64    `json:"revision,omitempty"`
	ExpiresAt           time.Time `json:"expires_at,omitzero"`
	BeforeExpirySeconds int64     `json:"before_expiry_seconds,omitempty"`

	// What a foreign_fetch event adds (with At): the API path, the calls
	// to it another party made on At's China day, and how many more than
	// at the last reading of the same day.
	Path   string `json:"cgi_path,omitempty"`
	Others int64  `json:"others,omitempty"`
	Growth int64  `json:"growth,omitempty"`
	// What WeChat's rid/get said of the refused call, when its errmsg
	// named a rid (40001, 45009, 40164, 48001) and the lookup answered in
	// time: when WeChat took the call, the IP it came from (the egress
	// address an IP whitelist must hold), and how long it took. Never the
	// request or the answer.
	InvokeTime time.Time `json:"invoke_time,omitzero"`
	ClientIP   string    `json:"client_ip,omitempty"`
	CostInMS   int64     `json:"cost_in_ms,omitempty"`
	// What a rescue of a spent quota adds (class quota, or config for an
	// account that may not reset its quota): what became of it (see
	// Rescue's outcomes), whose quota was spent (Path), the reset called, and
	// the resets of its budget wxtoken may still spend this month.
	Rescue          string `json:"rescue,omitempty"`
	ResetAPI        string `json:"reset_api,omitempty"`
	BudgetRemaining *int   `json:"budget_remaining,omitempty"`
}

// ClassInvalidatedElsewhere is the class of a failure event that says
// another party holding the app's secret ended a token the refresher
// stored: WeChat said it was dead before its expiry, and the refresher
// made no call since its fetch that could have ended it.
const ClassInvalidatedElsewhere = "invalidated_elsewhere"

// ClassForeignFetch is the class of a failure event that says WeChat's
// quota/get counts more calls to an API path that issues the app's
// credentials than the refresher made: another party holding the app's
// secret fetches them.
const ClassForeignFetch = "foreign_fetch"

// MaxRefreshRequestSize bounds a refresh request body.
const MaxRefreshRequestSize = 1024

// maxReasonLength bounds the free-text reason of a refresh request.
const maxReasonLength = 128

// ErrBadRequest is wrapped by every refresh request decoding failure.
var ErrBadRequest = errors.New("bad refresh request")

// RefreshRequest is the body of a request on the refresh subject.
type RefreshRequest struct {
	// StaleRevision is the revision the caller saw rejected; nil asks for the
	// current token without forcing a refresh.
	StaleRevision *uint64 `json:"stale_revision,omitempty"`
	// Reason is free text for logs, usually the errcode the caller saw.
	Reason string `json:"reason,omitempty"`
}

// DecodeRefreshRequest parses a refresh request. An empty body is a request
// without stale revision. Unknown fields are ignored.
func DecodeRefreshRequest(data []byte) (RefreshRequest, error) {
	if len(data) > MaxRefreshRequestSize {
		return RefreshRequest{}, fmt.Errorf("%w: %d bytes, more than %d", ErrBadRequest, len(data), MaxRefreshRequestSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return RefreshRequest{}, nil
	}
	// Raw fields, so that a revision given as a string, a fraction or a
	// negative number is refused instead of coerced.
	var raw struct {
		StaleRevision json.RawMessage `json:"stale_revision"`
		Reason        json.RawMessage `json:"reason"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return RefreshRequest{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	var req RefreshRequest
	if rev := string(raw.StaleRevision); rev != "" && rev != "null" {
		if strings.HasPrefix(rev, "-") {
			return RefreshRequest{}, fmt.Errorf("%w: stale_revision %s is negative", ErrBadRequest, rev)
		}
		n, err := strconv.ParseUint(rev, 10, 64)
		if err != nil {
			return RefreshRequest{}, fmt.Errorf("%w: stale_revision %s is not a revision number", ErrBadRequest, truncate(rev, 32))
		}
		req.StaleRevision = &n
	}
	if len(raw.Reason) > 0 && string(raw.Reason) != "null" {
		if err := json.Unmarshal(raw.Reason, &req.Reason); err != nil {
			return RefreshRequest{}, fmt.Errorf("%w: reason is not a string", ErrBadRequest)
		}
		req.Reason = truncate(req.Reason, maxReasonLength)
	}
	return req, nil
}

// EncodeRefreshRequest returns the JSON of req.
func EncodeRefreshRequest(req RefreshRequest) []byte {
	data, _ := json.Marshal(req) // cannot fail: a pointer to uint64 and a string
	return data
}

// Refresh reply error codes.
const (
	CodeBadRequest  = "bad_request"
	CodeUnknownApp  = "unknown_app"
	CodeRateLimited = "rate_limited"
	CodeUpstream    = "upstream"
	CodeUnavailable = "unavailable"
)

// ReplyError is the error part of a refresh reply.
type ReplyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfter, with CodeRateLimited, is how many seconds until a
	// forced refresh of the key may be asked for again; 0 when the
	// refresher does not say.
	RetryAfter int `json:"retry_after,omitempty"`
}

// RetryAfterSeconds is a wait as ReplyError.RetryAfter counts it: whole
// seconds, rounded up, and at least 1, so that a client that waits that
// long is not refused again.
func RetryAfterSeconds(wait time.Duration) int {
	return max(int((wait+time.Second-1)/time.Second), 1)
}

func (e *ReplyError) Error() string { return e.Code + ": " + e.Message }

// ServiceErrorCode is the HTTP-like code of an error code, as sent in the
// Nats-Service-Error-Code header of a micro service's error answer.
func ServiceErrorCode(code string) string {
	switch code {
	case CodeBadRequest:
		return "400"
	case CodeUnknownApp:
		return "404"
	case CodeRateLimited:
		return "429"
	case CodeUpstream:
		return "502"
	}
	return "503" // CodeUnavailable, and any code this version does not know
}

// RefreshReply answers a refresh request. A success names the current
// revision, already in the bucket; an error may name it too (rate_limited).
type RefreshReply struct {
	AppID     string
	Kind      string // as RotationEvent's
	Revision  uint64
	ExpiresAt time.Time
	Refreshed bool
	Error     *ReplyError
}

// wireReply is RefreshReply as it travels: an error reply that names no
// revision carries only the error, a success always says whether it refreshed.
type wireReply struct {
	AppID     string      `json:"appid,omitempty"`
	Kind      string      `json:"kind,omitempty"`
	Revision  uint64      `json:"revision,omitempty"`
	ExpiresAt time.Time   `json:"expires_at,omitzero"`
	Refreshed *bool       `json:"refreshed,omitempty"`
	Error     *ReplyError `json:"error,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (r RefreshReply) MarshalJSON() ([]byte, error) {
	w := wireReply{AppID: r.AppID, Kind: r.Kind, Revision: r.Revision, ExpiresAt: r.ExpiresAt.UTC(), Error: r.Error}
	if r.Error == nil {
		w.Refreshed = &r.Refreshed
	}
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *RefreshReply) UnmarshalJSON(data []byte) error {
	var w wireReply
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*r = RefreshReply{AppID: w.AppID, Kind: w.Kind, Revision: w.Revision, ExpiresAt: w.ExpiresAt, Error: w.Error}
	if w.Refreshed != nil {
		r.Refreshed = *w.Refreshed
	}
	return nil
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
