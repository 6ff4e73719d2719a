package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A third-party platform's (开放平台) state that cannot be fetched again
// lives in a bucket of its own, DefaultPlatformBucket, that only the
// refresher may read or write: the newest component_verify_ticket WeChat
// pushed (without it no component token can be had until the next push),
// and each authorizer's refresh token (without it the authorizer must
// authorize the platform again). Neither is ever logged or published.

// DefaultPlatformBucket is the name of the platform bucket.
const DefaultPlatformBucket = "wechat_platform"

// VerifyTicketKey is the key of a platform's verify ticket:
// "<component_appid>.verify_ticket".
func VerifyTicketKey(componentAppID string) string { return componentAppID + ".verify_ticket" }

// VerifyTicket is the record under VerifyTicketKey: the newest ticket WeChat
// pushed, by its CreateTime.
type VerifyTicket struct {
	ComponentAppID string    `json:"component_appid"`
	Ticket         string    `json:"ticket"`
	CreateTime     time.Time `json:"create_time"` // WeChat's, in the push
	ReceivedAt     time.Time `json:"received_at"`
}

// ErrInvalidPlatformRecord is wrapped by every validation or decoding
// failure of a platform record.
var ErrInvalidPlatformRecord = errors.New("kv: invalid platform record")

// Validate checks the record's fields.
func (t VerifyTicket) Validate() error {
	switch {
	case ValidateAppID(t.ComponentAppID) != nil:
		return fmt.Errorf("%w: component_appid %.40q", ErrInvalidPlatformRecord, t.ComponentAppID)
	case ValidateToken(t.Ticket) != nil:
		return fmt.Errorf("%w: the ticket is not 1 to %d printable characters", ErrInvalidPlatformRecord, MaxTokenLength)
	case t.CreateTime.IsZero() || t.ReceivedAt.IsZero():
		return fmt.Errorf("%w: create_time and received_at are required", ErrInvalidPlatformRecord)
	}
	return nil
}

// EncodeVerifyTicket validates and encodes t.
func EncodeVerifyTicket(t VerifyTicket) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	t.CreateTime, t.ReceivedAt = t.CreateTime.UTC(), t.ReceivedAt.UTC()
	return json.Marshal(t)
}

// DecodeVerifyTicket decodes and validates the record of componentAppID's
// ticket.
func DecodeVerifyTicket(componentAppID string, data []byte) (VerifyTicket, error) {
	var t VerifyTicket
	if len(data) > MaxRecordSize {
		return VerifyTicket{}, fmt.Errorf("%w: %d bytes", ErrInvalidPlatformRecord, len(data))
	}
	if err := json.Unmarshal(data, &t); err != nil {
		return VerifyTicket{}, fmt.Errorf("%w: %v", ErrInvalidPlatformRecord, err)
	}
	if err := t.Validate(); err != nil {
		return VerifyTicket{}, err
	}
	if t.ComponentAppID != componentAppID {
		return VerifyTicket{}, fmt.Errorf("%w: the record names %s, not %s", ErrInvalidPlatformRecord, t.ComponentAppID, componentAppID)
	}
	return t, nil
}

// Newer reports whether t replaces held: it was pushed later, or in the
// same second (CreateTime is in seconds) and received later, and it is
// another ticket.
func (t VerifyTicket) Newer(held VerifyTicket) bool {
	switch {
	case t.Ticket == held.Ticket || t.CreateTime.Before(held.CreateTime):
		return false
	case t.CreateTime.Equal(held.CreateTime):
		return t.ReceivedAt.After(held.ReceivedAt)
	}
	return true
}

// StoreNewerTicket stores t unless the bucket holds the same ticket or one
// t is not Newer than, and reports whether it did.
// Any replica may call it for a push it received: a compare-and-swap on
// the key's revision makes the newest push win, whatever the order the
// replicas store them in.
func StoreNewerTicket(ctx context.Context, b jetstream.KeyValue, t VerifyTicket) (bool, error) {
	data, err := EncodeVerifyTicket(t)
	if err != nil {
		return false, err
	}
	key := VerifyTicketKey(t.ComponentAppID)
	for {
		e, err := b.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = b.Create(ctx, key, data)
		case err != nil:
			return false, err
		default:
			if held, derr := DecodeVerifyTicket(t.ComponentAppID, e.Value()); derr == nil && !t.Newer(held) {
				return false, nil
			}
			_, err = b.Update(ctx, key, data, e.Revision())
		}
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return false, err
		}
		// Another replica stored a ticket meanwhile: compare with it.
	}
}

// isWrongLastSequence reports whether an Update lost its compare-and-swap.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// PlatformKey is the key of the record of a platform the refresher serves:
// "<component_appid>.platform".
func PlatformKey(componentAppID string) string { return componentAppID + ".platform" }

// platformSuffix ends every PlatformKey.
const platformSuffix = ".platform"

// SplitPlatformKey returns the component appid a PlatformKey names.
func SplitPlatformKey(key string) (componentAppID string, ok bool) {
	component, found := strings.CutSuffix(key, platformSuffix)
	if !found || ValidateAppID(component) != nil {
		return "", false
	}
	return component, true
}

// PlatformsKeys is the key filter of every platform's record.
const PlatformsKeys = "*" + platformSuffix

// ConfiguredPlatform is the record under PlatformKey: the refresher keeps
// one for each platform of its apps file, from the moment it first serves
// it, so that the tools know which platforms it serves (an import for any
// other would be kept for nobody) and since when a platform waits for
// WeChat's first push. It holds no secret.
type ConfiguredPlatform struct {
	ComponentAppID string    `json:"component_appid"`
	ConfiguredAt   time.Time `json:"configured_at"` // when a refresher first served it
}

// Validate checks the record's fields.
func (p ConfiguredPlatform) Validate() error {
	switch {
	case ValidateAppID(p.ComponentAppID) != nil:
		return fmt.Errorf("%w: component_appid %.40q", ErrInvalidPlatformRecord, p.ComponentAppID)
	case p.ConfiguredAt.IsZero():
		return fmt.Errorf("%w: configured_at is required", ErrInvalidPlatformRecord)
	}
	return nil
}

// DecodeConfiguredPlatform decodes and validates the record of
// componentAppID.
func DecodeConfiguredPlatform(componentAppID string, data []byte) (ConfiguredPlatform, error) {
	var p ConfiguredPlatform
	if len(data) > MaxRecordSize {
		return ConfiguredPlatform{}, fmt.Errorf("%w: %d bytes", ErrInvalidPlatformRecord, len(data))
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return ConfiguredPlatform{}, fmt.Errorf("%w: %v", ErrInvalidPlatformRecord, err)
	}
	if err := p.Validate(); err != nil {
		return ConfiguredPlatform{}, err
	}
	if p.ComponentAppID != componentAppID {
		return ConfiguredPlatform{}, fmt.Errorf("%w: the record names %s, not %s", ErrInvalidPlatformRecord, p.ComponentAppID, componentAppID)
	}
	return p, nil
}

// RecordPlatform records that the refresher serves the platform, since
// now, unless a record says since when already: that one stays. It
// reports whether it wrote.
func RecordPlatform(ctx context.Context, b jetstream.KeyValue, componentAppID string, now time.Time) (bool, error) {
	p := ConfiguredPlatform{ComponentAppID: componentAppID, ConfiguredAt: now.UTC()}
	if err := p.Validate(); err != nil {
		return false, err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return false, err
	}
	_, err = b.Create(ctx, PlatformKey(componentAppID), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	return err == nil, err
}

// AuthorizerKey is the key of an authorizer's record:
// "<component_appid>.authorizer.<authorizer_appid>".
func AuthorizerKey(componentAppID, authorizerAppID string) string {
	return componentAppID + ".authorizer." + authorizerAppID
}

// AuthorizersOf is the key filter of every authorizer of a platform.
func AuthorizersOf(componentAppID string) string { return componentAppID + ".authorizer.*" }

// SplitAuthorizerKey returns the appids an AuthorizerKey names.
func SplitAuthorizerKey(key string) (componentAppID, authorizerAppID string, ok bool) {
	component, rest, found := strings.Cut(key, ".authorizer.")
	if !found || ValidateAppID(component) != nil || ValidateAppID(rest) != nil {
		return "", "", false
	}
	return component, rest, true
}

// Authorizer is the record of an account that authorized a platform. Its
// refresh token is the one thing the platform cannot fetch again. A record
// changes in two ways, each by a compare-and-swap (UpdateAuthorizer):
// an authorization event (the newest CreateTime wins) sets Code, or
// Unauthorized; a fetch that WeChat answered with a refresh token replaces
// RefreshToken (the newest IssuedAt wins).
type Authorizer struct {
	ComponentAppID string `json:"component_appid"`
	AppID          string `json:"authorizer_appid"`
	RefreshToken   string `json:"refresh_token,omitempty"`
	// IssuedAt is when the call that returned RefreshToken started, by
	// the refresher's clock, or when it was imported.
	IssuedAt time.Time `json:"issued_at,omitzero"`
	// Code is an authorization code not yet exchanged (api_query_auth),
	// usable until CodeExpiresAt.
	Code          string    `json:"code,omitempty"`
	CodeExpiresAt time.Time `json:"code_expires_at,omitzero"`
	// EventTime is the CreateTime of the newest authorization event taken
	// in: an older one, pushed again, changes nothing.
	EventTime time.Time `json:"event_time,omitzero"`
	// Unauthorized is set by the unauthorized event: the account withdrew
	// its authorization, and its token is no longer kept.
	Unauthorized bool `json:"unauthorized,omitempty"`
}

// The states of an authorizer's record, as State names them.
const (
	stateActive       = "active"
	stateAwaitingCode = "awaiting code exchange" // authorized, the code not yet exchanged for a refresh token
	stateUnauthorized = "unauthorized"
	stateNoToken      = "no refresh token"
)

// State names what the record says of the authorizer: active (it has a
// refresh token), awaiting code exchange (an authorization code, no
// refresh token yet), unauthorized (it withdrew), or no refresh token.
func (a Authorizer) State() string {
	switch {
	case a.Unauthorized:
		return stateUnauthorized
	case a.RefreshToken != "":
		return stateActive
	case a.Code != "":
		return stateAwaitingCode
	}
	return stateNoToken
}

// String describes the record without its refresh token or code, which
// are never to be printed: fmt, a panic's text and a log line all get
// this.
func (a Authorizer) String() string {
	return fmt.Sprintf("authorizer %s of %s (%s, issued %s)", a.AppID, a.ComponentAppID, a.State(), a.IssuedAt.UTC().Format(time.RFC3339))
}

// GoString is String, for %#v.
func (a Authorizer) GoString() string { return a.String() }

// LogValue is String, for slog.
func (a Authorizer) LogValue() slog.Value { return slog.StringValue(a.String()) }

// Active reports whether the authorizer's token is to be kept: it has not
// withdrawn, and there is a refresh token or a code to get one with.
func (a Authorizer) Active() bool {
	return !a.Unauthorized && (a.RefreshToken != "" || a.Code != "")
}

// A record changes by the rules below, whoever changes it (the refresher's
// callback and its fetches, `wxtoken authorizers import`), each time with
// a compare-and-swap (UpdateAuthorizer) that applies the rule again to a
// record another writer changed meanwhile.

// authCodeLifetime is how long WeChat lets an authorization code be
// exchanged, for an event that does not say.
const authCodeLifetime = time.Hour

// WithRefreshToken returns the record with the refresh token WeChat issued
// at issuedAt, and whether that changes it: the newest issued wins, so a
// refresh token issued after this one stays. An authorization code not yet
// exchanged stays too, unless it is spent, the code the call that issued
// the token exchanged. The rest of the record (a withdrawal included) is
// kept: the caller decides whether a withdrawn record may take a token.
func (a Authorizer) WithRefreshToken(token string, issuedAt time.Time, spent string) (Authorizer, bool) {
	if a.RefreshToken != "" && a.IssuedAt.After(issuedAt) {
		return a, false
	}
	a.RefreshToken, a.IssuedAt = token, issuedAt
	if spent != "" && a.Code == spent {
		a.Code, a.CodeExpiresAt = "", time.Time{}
	}
	return a, true
}

// Authorized returns the record after an authorization event (authorized,
// or updateauthorized) of time at that gave code, usable until
// codeExpiresAt (an hour from the event when that is not after it), and
// whether that changes it. The newest event wins; WeChat's event times
// are in seconds, so of two events of one second the one not in yet goes
// in, but a withdrawal stays. The refresh token is kept: the code is
// exchanged for a new one, and until then the old one works.
func (a Authorizer) Authorized(at time.Time, code string, codeExpiresAt time.Time) (Authorizer, bool) {
	if a.EventTime.After(at) || a.EventTime.Equal(at) && (a.Unauthorized || a.Code == code) {
		return a, false
	}
	a.Unauthorized, a.EventTime = false, at
	a.Code, a.CodeExpiresAt = code, codeExpiresAt
	if !a.CodeExpiresAt.After(at) {
		a.CodeExpiresAt = at.Add(authCodeLifetime)
	}
	return a, code != "" || a.RefreshToken != ""
}

// Withdrawn returns the record after the unauthorized event of time at,
// and whether that changes it: unless a newer event is in, the record
// keeps nothing but the withdrawal.
func (a Authorizer) Withdrawn(at time.Time) (Authorizer, bool) {
	if a.EventTime.After(at) || a.EventTime.Equal(at) && a.Unauthorized {
		return a, false
	}
	return Authorizer{ComponentAppID: a.ComponentAppID, AppID: a.AppID, Unauthorized: true, EventTime: at}, true
}

// Validate checks the record's fields.
func (a Authorizer) Validate() error {
	switch {
	case ValidateAppID(a.ComponentAppID) != nil:
		return fmt.Errorf("%w: component_appid %.40q", ErrInvalidPlatformRecord, a.ComponentAppID)
	case ValidateID(a.AppID) != nil:
		return fmt.Errorf("%w: authorizer_appid %.40q", ErrInvalidPlatformRecord, a.AppID)
	case a.RefreshToken != "" && ValidateToken(a.RefreshToken) != nil:
		return fmt.Errorf("%w: the refresh token is not 1 to %d printable characters", ErrInvalidPlatformRecord, MaxTokenLength)
	case a.Code != "" && ValidateToken(a.Code) != nil:
		return fmt.Errorf("%w: the authorization code is not 1 to %d printable characters", ErrInvalidPlatformRecord, MaxTokenLength)
	case a.Unauthorized && (a.RefreshToken != "" || a.Code != ""):
		return fmt.Errorf("%w: an unauthorized record keeps no refresh token or code", ErrInvalidPlatformRecord)
	}
	return nil
}

// EncodeAuthorizer validates and encodes a.
func EncodeAuthorizer(a Authorizer) ([]byte, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	for _, t := range []*time.Time{&a.IssuedAt, &a.CodeExpiresAt, &a.EventTime} {
		*t = t.UTC()
	}
	return json.Marshal(a)
}

// DecodeAuthorizer decodes and validates the record under key.
func DecodeAuthorizer(key string, data []byte) (Authorizer, error) {
	component, appid, ok := SplitAuthorizerKey(key)
	if !ok {
		return Authorizer{}, fmt.Errorf("%w: %.80q is not an authorizer's key", ErrInvalidPlatformRecord, key)
	}
	if len(data) > MaxRecordSize {
		return Authorizer{}, fmt.Errorf("%w: %d bytes", ErrInvalidPlatformRecord, len(data))
	}
	var a Authorizer
	if err := json.Unmarshal(data, &a); err != nil {
		return Authorizer{}, fmt.Errorf("%w: %v", ErrInvalidPlatformRecord, err)
	}
	if err := a.Validate(); err != nil {
		return Authorizer{}, err
	}
	if a.ComponentAppID != component || a.AppID != appid {
		return Authorizer{}, fmt.Errorf("%w: the record names %s of %s, not the key's", ErrInvalidPlatformRecord, a.AppID, a.ComponentAppID)
	}
	return a, nil
}

// UpdateAuthorizer changes the record of an authorizer with a
// compare-and-swap: change gets the record held (found is false when there
// is none, or it is undecodable) and returns the one to store, or false to
// store nothing. When another writer changed the record meanwhile, change
// is called again with theirs. It returns the record the key holds
// afterwards, its revision, and whether it was written.
func UpdateAuthorizer(ctx context.Context, b jetstream.KeyValue, componentAppID, authorizerAppID string,
	change func(held Authorizer, found bool) (Authorizer, bool)) (Authorizer, uint64, bool, error) {
	key := AuthorizerKey(componentAppID, authorizerAppID)
	for {
		var held Authorizer
		var rev uint64
		found := false
		e, err := b.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return Authorizer{}, 0, false, err
		default:
			rev = e.Revision()
			if a, derr := DecodeAuthorizer(key, e.Value()); derr == nil {
				held, found = a, true
			}
		}
		next, write := change(held, found)
		if !write {
			return held, rev, false, nil
		}
		next.ComponentAppID, next.AppID = componentAppID, authorizerAppID
		data, err := EncodeAuthorizer(next)
		if err != nil {
			return Authorizer{}, 0, false, err
		}
		if rev == 0 {
			rev, err = b.Create(ctx, key, data)
		} else {
			rev, err = b.Update(ctx, key, data, rev)
		}
		if err == nil {
			return next, rev, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return Authorizer{}, 0, false, err
		}
		// Another writer changed the record meanwhile: decide again.
	}
}
