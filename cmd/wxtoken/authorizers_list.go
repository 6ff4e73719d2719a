package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
)

// stateInvalid is the state `wxtoken authorizers list` gives a record it
// cannot decode; kv.Authorizer.State names the others.
const stateInvalid = "invalid record"

// authorizerRow is one authorizer in `wxtoken authorizers list`.
type authorizerRow struct {
	ComponentAppID string `json:"component_appid"`
	AppID          string `json:"authorizer_appid"`
	State          string `json:"state"`
	// RefreshToken is the token's fingerprint, "sha256:" and 8 hex digits.
	RefreshToken         string    `json:"refresh_token_fingerprint,omitempty"`
	IssuedAt             time.Time `json:"issued_at,omitzero"`
	CodeExpiresAt        time.Time `json:"code_expires_at,omitzero"`
	Revision             uint64    `json:"revision"`
	AccessTokenExpiresAt time.Time `json:"access_token_expires_at,omitzero"` // from the token bucket
	Error                string    `json:"error,omitempty"`
}

// platformRow is one platform in `wxtoken authorizers list`.
type platformRow struct {
	ComponentAppID string `json:"component_appid"`
	Authorizers    int    `json:"authorizers"`
	// ConfiguredAt is when a refresher first served the platform; absent
	// when none serves it.
	ConfiguredAt time.Time `json:"configured_at,omitzero"`
	// The verify ticket's times, absent while there is none.
	TicketCreateTime time.Time `json:"verify_ticket_create_time,omitzero"` // WeChat's
	TicketReceivedAt time.Time `json:"verify_ticket_received_at,omitzero"`
	Error            string    `json:"error,omitempty"` // the ticket's record is invalid
}

const listSummary = `Show the authorizers in the platform bucket, one row each: platform, appid,
state (active; awaiting code exchange: authorized, the code not yet
exchanged for a refresh token; unauthorized), the refresh token's
fingerprint (sha256: and the first 8 hex digits of its SHA-256, never the
token) and age, and when its access_token in the token bucket expires
("-" when there is none or the bucket cannot be read). Above them, each
platform's verify ticket: how long ago WeChat pushed it, or since when the
refresher waits for WeChat's first push.`

// ticketLifetime is how long WeChat says a verify ticket lives.
const ticketLifetime = 12 * time.Hour

func listAuthorizers(args []string, getenv func(string) string, stdout io.Writer) error {
	var n natsFlags
	var component, bucket string
	var asJSON bool
	c := newCommand("authorizers list", "", listSummary,
		"  wxtoken authorizers list --nats-user refresher\n  wxtoken authorizers list --component wx1234567890abcdef --json | jq '.authorizers[] | select(.state != \"active\")'")
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket)
	platformFlags(c, &component, &bucket, "list only the platform of this component `appid`")
	c.Bool(&asJSON, "json", "", false, "print JSON instead of tables")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	if err := checkPlatformFlags(component, bucket); err != nil {
		return err
	}
	nc, err := n.connect("wxtoken authorizers list")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	var platforms []platformRow
	var rows []authorizerRow
	if err := nc.do(ctx, func(ctx context.Context) error {
		b, err := bindPlatform(ctx, nc.Conn, bucket)
		if err != nil {
			return err
		}
		platforms, rows, err = readPlatforms(ctx, b, component)
		return err
	}); err != nil {
		return err
	}
	if len(rows) > 0 {
		// Last: a refusal here leaves "-", not a failure.
		tokenCtx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		defer cancel()
		nc.do(tokenCtx, func(ctx context.Context) error {
			expiries := readExpiries(ctx, nc.Conn, n.bucket, rows)
			for i := range rows {
				rows[i].AccessTokenExpiresAt = expiries[rows[i].AppID]
			}
			return nil
		})
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Bucket      string          `json:"bucket"`
			TokenBucket string          `json:"token_bucket"`
			Platforms   []platformRow   `json:"platforms"`
			Authorizers []authorizerRow `json:"authorizers"`
		}{bucket, n.bucket, platforms, rows})
	}
	if len(platforms) == 0 {
		fmt.Fprintf(stdout, "no platforms or authorizers in bucket %s\n", bucket)
		return nil
	}
	return printAuthorizers(stdout, platforms, rows, time.Now())
}

// printAuthorizers prints the platforms, then the authorizers, as tables.
func printAuthorizers(stdout io.Writer, platforms []platformRow, rows []authorizerRow, now time.Time) error {
	if err := printPlatforms(stdout, platforms, now); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	return printAuthorizerRows(stdout, rows, now)
}

// printPlatforms prints each platform's authorizer count and verify ticket.
func printPlatforms(stdout io.Writer, platforms []platformRow, now time.Time) error {
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PLATFORM\tAUTHORIZERS\tVERIFY TICKET")
	for _, p := range platforms {
		fmt.Fprintf(w, "%s\t%d\t%s\n", p.ComponentAppID, p.Authorizers, p.ticketState(now))
	}
	return w.Flush()
}

// ticketState says what a platform's verify ticket is: how old, or since
// when the refresher waits for the first, or that no refresher serves the
// platform to receive one.
func (p platformRow) ticketState(now time.Time) string {
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" }
	switch {
	case p.Error != "":
		return stateInvalid + ": " + p.Error
	case p.TicketReceivedAt.IsZero() && p.ConfiguredAt.IsZero():
		return "none: no refresher serves this platform"
	case p.TicketReceivedAt.IsZero():
		return "none: waiting for WeChat's first push since " + p.ConfiguredAt.UTC().Format(time.RFC3339) + ", " + ago(p.ConfiguredAt)
	case now.Sub(p.TicketReceivedAt) > ticketLifetime:
		return "received " + ago(p.TicketReceivedAt) + ", past its 12h lifetime"
	}
	return "received " + ago(p.TicketReceivedAt)
}

// printAuthorizerRows prints the table of authorizers.
func printAuthorizerRows(stdout io.Writer, rows []authorizerRow, now time.Time) error {
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" }
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "COMPONENT\tAUTHORIZER\tSTATE\tREFRESH TOKEN\tISSUED\tACCESS TOKEN")
	for _, r := range rows {
		state, token, issued, access := r.State, cmp.Or(r.RefreshToken, "-"), "-", "-"
		if r.Error != "" {
			state += ": " + r.Error
		}
		if !r.IssuedAt.IsZero() {
			issued = ago(r.IssuedAt)
		}
		switch {
		case r.AccessTokenExpiresAt.IsZero():
		case now.Before(r.AccessTokenExpiresAt):
			access = "expires in " + r.AccessTokenExpiresAt.Sub(now).Round(time.Second).String()
		default:
			access = "EXPIRED"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ComponentAppID, r.AppID, state, token, issued, access)
	}
	return w.Flush()
}

// readPlatforms reads the platform bucket (the keys of one platform, if
// component is not empty) with one watch.
func readPlatforms(ctx context.Context, b jetstream.KeyValue, component string) ([]platformRow, []authorizerRow, error) {
	var filters []string
	if component != "" {
		filters = []string{kv.AuthorizersOf(component), kv.VerifyTicketKey(component), kv.PlatformKey(component)}
	}
	entries, err := readBucket(ctx, b, filters...)
	if err != nil {
		return nil, nil, err
	}
	platforms := map[string]*platformRow{}
	platform := func(component string) *platformRow {
		if platforms[component] == nil {
			platforms[component] = &platformRow{ComponentAppID: component}
		}
		return platforms[component]
	}
	if component != "" {
		platform(component)
	}
	rows := []authorizerRow{}
	for _, e := range entries {
		if c, appid, ok := kv.SplitAuthorizerKey(e.Key()); ok {
			platform(c).Authorizers++
			rows = append(rows, authorizerRowOf(c, appid, e))
			continue
		}
		if c, ok := kv.SplitPlatformKey(e.Key()); ok {
			p := platform(c)
			if served, err := kv.DecodeConfiguredPlatform(c, e.Value()); err == nil {
				p.ConfiguredAt = served.ConfiguredAt
			}
			continue
		}
		c, ok := strings.CutSuffix(e.Key(), kv.VerifyTicketKey(""))
		if !ok || kv.ValidateAppID(c) != nil {
			continue // a key this version does not know
		}
		p := platform(c)
		if t, err := kv.DecodeVerifyTicket(c, e.Value()); err != nil {
			p.Error = err.Error()
		} else {
			p.TicketCreateTime, p.TicketReceivedAt = t.CreateTime, t.ReceivedAt
		}
	}
	sorted := []platformRow{}
	for _, p := range platforms {
		sorted = append(sorted, *p)
	}
	slices.SortFunc(sorted, func(a, b platformRow) int { return strings.Compare(a.ComponentAppID, b.ComponentAppID) })
	slices.SortFunc(rows, func(a, b authorizerRow) int {
		return cmp.Or(strings.Compare(a.ComponentAppID, b.ComponentAppID), strings.Compare(a.AppID, b.AppID))
	})
	return sorted, rows, nil
}

// authorizerRowOf describes the record e of an authorizer.
func authorizerRowOf(component, appid string, e jetstream.KeyValueEntry) authorizerRow {
	row := authorizerRow{ComponentAppID: component, AppID: appid, Revision: e.Revision()}
	a, err := kv.DecodeAuthorizer(e.Key(), e.Value())
	if err != nil {
		row.State, row.Error = stateInvalid, err.Error()
		return row
	}
	row.State = a.State()
	if a.RefreshToken != "" {
		row.RefreshToken, row.IssuedAt = fingerprint(a.RefreshToken), a.IssuedAt
	}
	if a.Code != "" {
		row.CodeExpiresAt = a.CodeExpiresAt
	}
	return row
}

// readExpiries returns when the access_tokens of the rows' authorizers
// expire, read from the token bucket with one watch; nothing if it
// cannot be read.
func readExpiries(ctx context.Context, nc *nats.Conn, bucket string, rows []authorizerRow) map[string]time.Time {
	want := map[string]bool{}
	for _, r := range rows {
		want[r.AppID] = true
	}
	b, err := bindBucket(ctx, nc, bucket)
	if err != nil {
		return nil
	}
	entries, err := kv.ReadAll(ctx, b)
	if err != nil {
		return nil
	}
	expiries := map[string]time.Time{}
	for _, e := range entries {
		if !want[e.Key()] {
			continue
		}
		if c, err := kv.DecodeCredential(e.Key(), e.Value()); err == nil {
			expiries[e.Key()] = c.ExpiresAt
		}
	}
	return expiries
}
