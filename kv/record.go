// Package kv is the one place that knows wxtoken's wire format: the JetStream
// KV bucket that holds the credentials, the JSON record stored under each key
// (an appid or a WeCom "<corpid>-<agent>" for a token, "<key>.<kind>" for a
// ticket; see Credential and ValidateKey), and the messages on the
// wechat.token.* subjects. Services in other languages read the same
// bucket and subjects, so everything here is a public contract: the
// README's "Wire contract" section is its description.
package kv

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxTokenLength is the longest access_token accepted, in characters. WeChat
// asks integrators to reserve at least 512; 2048 leaves room for growth.
const MaxTokenLength = 2048

// MaxRecordSize bounds an encoded record. A valid record is far smaller; the
// bound keeps a garbage value from costing more than it must to reject.
const MaxRecordSize = 16 << 10

// ErrInvalidRecord is wrapped by every validation or decoding failure of a
// token record.
var ErrInvalidRecord = errors.New("kv: invalid token record")

// record is the value stored under a token's key in the token bucket, as
// Credential encodes and decodes it. Times are UTC and second-precise on
// the wire (RFC 3339).
type record struct {
	AppID       string    `json:"appid"`
	AccessToken string    `json:"access_token"`
	ExpiresIn   int64     `json:"expires_in"` // seconds, as WeChat returned it
	FetchedAt   time.Time `json:"fetched_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	// Reason is why the token was fetched: ReasonInitial, ReasonScheduled
	// or ReasonRequested. Optional: records written by other tools may
	// lack it.
	Reason string `json:"reason,omitempty"`
	// API is the WeChat API that issued the token when it is not
	// /cgi-bin/token: APIStableToken or APIWeCom. Optional: absent means
	// /cgi-bin/token.
	API string `json:"api,omitempty"`
}

// The values of a token record's "api" (Credential.API).
const (
	APIStableToken = "stable_token" // /cgi-bin/stable_token
	APIWeCom       = "wecom"        // WeCom's /cgi-bin/gettoken, under a "<corpid>-<agent>" key
)

// newRecord builds the record for a token fetched at fetchedAt that WeChat
// said lives for expiresIn.
func newRecord(appid, token string, expiresIn time.Duration, fetchedAt time.Time) record {
	// The wire carries whole seconds; truncating fetched_at (and not rounding)
	// keeps expires_at from moving later than the real expiry.
	fetchedAt = fetchedAt.UTC().Truncate(time.Second)
	return record{
		AppID:       appid,
		AccessToken: token,
		ExpiresIn:   int64(expiresIn / time.Second),
		FetchedAt:   fetchedAt,
		ExpiresAt:   fetchedAt.Add(expiresIn).Truncate(time.Second),
	}
}

// validate checks the record against the contract.
func (r record) validate() error {
	if err := ValidateAppID(r.AppID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if err := ValidateToken(r.AccessToken); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	return validateTimes(r.ExpiresIn, r.FetchedAt, r.ExpiresAt)
}

// validateTimes checks the times every record has.
func validateTimes(expiresIn int64, fetchedAt, expiresAt time.Time) error {
	if expiresIn <= 0 {
		return fmt.Errorf("%w: expires_in %d is not positive", ErrInvalidRecord, expiresIn)
	}
	if fetchedAt.IsZero() || expiresAt.IsZero() {
		return fmt.Errorf("%w: fetched_at and expires_at are required", ErrInvalidRecord)
	}
	if !expiresAt.After(fetchedAt) {
		return fmt.Errorf("%w: expires_at %s is not after fetched_at %s", ErrInvalidRecord,
			expiresAt.Format(time.RFC3339), fetchedAt.Format(time.RFC3339))
	}
	return nil
}

// ValidateToken checks an access_token: non-empty, at most MaxTokenLength
// characters, valid UTF-8 and free of spaces and control characters (it ends
// up in URLs and HTTP headers).
func ValidateToken(token string) error {
	// The common case, printable ASCII, in one pass over the bytes.
	if len(token) > 0 && len(token) <= MaxTokenLength && printableASCII(token) {
		return nil
	}
	switch n := utf8.RuneCountInString(token); {
	case token == "":
		return errors.New("access_token is empty")
	case n > MaxTokenLength:
		return fmt.Errorf("access_token has %d characters, more than %d", n, MaxTokenLength)
	case !utf8.ValidString(token):
		return errors.New("access_token is not valid UTF-8")
	}
	for _, c := range token {
		if unicode.IsSpace(c) || unicode.IsControl(c) {
			return fmt.Errorf("access_token contains the character %U", c)
		}
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// encodeRecord validates r and returns its JSON. A record that fails validation is
// never encoded, so nothing invalid reaches the bucket through this package.
func encodeRecord(r record) ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	r.FetchedAt = r.FetchedAt.UTC()
	r.ExpiresAt = r.ExpiresAt.UTC()
	return json.Marshal(r)
}

// decodeRecord parses and validates a record. Unknown fields are ignored, as the
// contract asks of every reader.
func decodeRecord(data []byte) (record, error) {
	if len(data) > MaxRecordSize {
		return record{}, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidRecord, len(data), MaxRecordSize)
	}
	r, ok := decodeCanonical(data)
	if !ok {
		if err := json.Unmarshal(data, &r); err != nil {
			return record{}, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
		}
	}
	if err := r.validate(); err != nil {
		return record{}, err
	}
	return r, nil
}

// decodeRecordFor decodes a record read under the key appid and checks
// that it names that app: a record copied under the wrong key is as bad as
// garbage.
func decodeRecordFor(appid string, data []byte) (record, error) {
	r, err := decodeRecord(data)
	if err != nil {
		return record{}, err
	}
	if r.AppID != appid {
		return record{}, fmt.Errorf("%w: record names appid %q, stored under %q", ErrInvalidRecord, r.AppID, appid)
	}
	return r, nil
}
