package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
)

// clientTimeout bounds a client command's NATS calls.
const clientTimeout = 10 * time.Second

func get(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	var n natsFlags
	c := newCommand("get", "KEY", "Print the current value of a key and nothing else, for shell scripts: the app's\naccess_token for an APPID, a ticket for APPID.jsapi_ticket or APPID.wx_card_ticket.\nFails if there is none or it has expired.",
		`  curl "https://api.weixin.qq.com/cgi-bin/getcallbackip?access_token=$(wxtoken get wx1234567890abcdef)"
  wxtoken get wx1234567890abcdef.jsapi_ticket`)
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket)
	key, err := oneKey(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	nc, err := n.connect("wxtoken get")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	var rec kv.Credential
	err = nc.do(ctx, func(ctx context.Context) (err error) {
		rec, _, err = readCredential(ctx, nc.Conn, n.bucket, key)
		return err
	})
	if err != nil {
		return err
	}
	if !rec.ValidAt(time.Now()) {
		return fmt.Errorf("the value of %s expired at %s (is the refresher running?)", key, rec.ExpiresAt.Format(time.RFC3339))
	}
	fmt.Fprintln(stdout, rec.Value)
	return nil
}

// readCredential reads and decodes the record of a key.
func readCredential(ctx context.Context, nc *nats.Conn, bucket, key string) (kv.Credential, uint64, error) {
	b, err := bindBucket(ctx, nc, bucket)
	if err != nil {
		return kv.Credential{}, 0, err
	}
	e, err := b.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return kv.Credential{}, 0, fmt.Errorf("no value for %s in bucket %s (is it in the refresher's apps?)", key, bucket)
	}
	if err != nil {
		return kv.Credential{}, 0, describeNATSError(err)
	}
	rec, err := kv.DecodeCredential(key, e.Value())
	if err != nil {
		return kv.Credential{}, 0, fmt.Errorf("revision %d of %s: %w", e.Revision(), key, err)
	}
	return rec, e.Revision(), nil
}

func bindBucket(ctx context.Context, nc *nats.Conn, bucket string) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	b, err := kv.Bind(ctx, js, bucket)
	if err != nil {
		return nil, describeNATSError(err)
	}
	return b, nil
}

// describeNATSError makes a permission error say so in words.
func describeNATSError(err error) error {
	if errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("permission denied: %w", err)
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return fmt.Errorf("JetStream is not available at this NATS server (or this user may not use it): %w", err)
	}
	return err
}

// oneKey parses the command's flags and its one KEY argument.
func oneKey(c *command, args []string, getenv func(string) string, stdout io.Writer) (string, error) {
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return "", err
	}
	if len(rest) != 1 {
		return "", usagef("need exactly one KEY: an appid, or APPID.jsapi_ticket or APPID.wx_card_ticket (see wxtoken %s --help)", c.name)
	}
	if err := kv.ValidateKey(rest[0]); err != nil {
		return "", usageError{err.Error()}
	}
	return rest[0], nil
}

func watch(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var n natsFlags
	var asJSON bool
	c := newCommand("watch", "[KEY]", "Print rotations, failures and removals as they happen, one line each, until\ninterrupted. With no KEY, every key's: tokens and tickets.",
		"  wxtoken watch\n  wxtoken watch wx1234567890abcdef --json\n  wxtoken watch wx1234567890abcdef.jsapi_ticket")
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withSubject)
	c.Bool(&asJSON, "json", "", false, "print each event's JSON as published")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	appid := ">" // every key, "<appid>.<kind>" ones included
	switch len(rest) {
	case 0:
	case 1:
		if err := kv.ValidateKey(rest[0]); err != nil {
			return usageError{err.Error()}
		}
		appid = rest[0]
	default:
		return usagef("at most one KEY")
	}
	nc, err := n.connect("wxtoken watch")
	if err != nil {
		return err
	}
	defer nc.Close()
	subjects := kv.Subjects{Prefix: n.prefix}
	events := make(chan *nats.Msg, 64)
	for _, subject := range []string{subjects.Rotated(appid), subjects.Failed(appid), subjects.Removed(appid)} {
		if _, err := nc.ChanSubscribe(subject, events); err != nil {
			return describeNATSError(err)
		}
	}
	if err := nc.Flush(); err != nil {
		return describeNATSError(err)
	}
	if err := nc.LastError(); err != nil {
		return describeNATSError(err)
	}
	select {
	case err := <-nc.denied:
		return fmt.Errorf("permission denied: %w", err)
	default:
	}
	fmt.Fprintf(stderr, "watching %s, %s and %s (Ctrl-C to stop)\n", subjects.Rotated(appid), subjects.Failed(appid), subjects.Removed(appid))
	ctx, stop := signalContext()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-nc.closed:
			return errors.New("connection to NATS lost")
		case m := <-events:
			if asJSON {
				fmt.Fprintln(stdout, string(m.Data))
				continue
			}
			fmt.Fprintln(stdout, describeEvent(m.Subject, subjects, m.Data))
		}
	}
}

// describeEvent renders a rotated, failed or removed event as one line.
func describeEvent(subject string, subjects kv.Subjects, data []byte) string {
	undecodable := "undecodable event: " + strconv.Quote(string(data))
	now := time.Now().UTC().Format(time.RFC3339)
	if strings.HasPrefix(subject, subjects.Removed("")) {
		var ev kv.RemovalEvent
		if json.Unmarshal(data, &ev) != nil {
			return undecodable
		}
		return fmt.Sprintf("%s %s REMOVED revision=%d reason=%s", now, kv.Key(ev.AppID, ev.Kind), ev.Revision, ev.Reason)
	}
	if strings.HasPrefix(subject, subjects.Failed("")) {
		var ev kv.FailureEvent
		if json.Unmarshal(data, &ev) != nil {
			return undecodable
		}
		return fmt.Sprintf("%s %s FAILED errcode=%d class=%s next_attempt=%s errmsg=%q",
			now, kv.Key(ev.AppID, ev.Kind), ev.ErrCode, ev.Class, ev.NextAttempt.Format(time.RFC3339), ev.ErrMsg)
	}
	var ev kv.RotationEvent
	if json.Unmarshal(data, &ev) != nil {
		return undecodable
	}
	return fmt.Sprintf("%s %s rotated revision=%d reason=%s expires_at=%s",
		now, kv.Key(ev.AppID, ev.Kind), ev.Revision, ev.Reason, ev.ExpiresAt.Format(time.RFC3339))
}

func refresh(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	var n natsFlags
	var stale int64
	var force bool
	c := newCommand("refresh", "KEY", `Ask the refresher about a key (an app's token, or APPID.jsapi_ticket and
the like) and say what it did.
Without flags it reports the current token and fetches one only if there is
none. --force names the current revision as rejected, which makes the
refresher check it with WeChat and rotate it if WeChat no longer accepts it
(at most once per --min-force-interval).`,
		"  wxtoken refresh wx1234567890abcdef\n  wxtoken refresh wx1234567890abcdef --force\n  wxtoken refresh wx1234567890abcdef --stale-revision 42")
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket|withSubject)
	c.Int64(&stale, "stale-revision", "", 0, "the revision that was rejected")
	c.Bool(&force, "force", "", false, "name the current revision as rejected")
	appid, err := oneKey(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if c.given("stale-revision") && stale < 0 {
		return usagef("--stale-revision %d is negative", stale)
	}
	if force && c.given("stale-revision") {
		return usagef("give --force or --stale-revision, not both")
	}
	nc, err := n.connect("wxtoken refresh")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*clientTimeout)
	defer cancel()
	var msg *nats.Msg
	var req kv.RefreshRequest
	err = nc.do(ctx, func(ctx context.Context) error {
		if force {
			_, rev, err := readCredential(ctx, nc.Conn, n.bucket, appid)
			if err != nil {
				return err
			}
			stale = int64(rev)
		}
		if force || c.given("stale-revision") {
			rev := uint64(stale)
			req = kv.RefreshRequest{StaleRevision: &rev, Reason: "wxtoken refresh"}
		}
		var err error
		msg, err = nc.RequestWithContext(ctx, kv.Subjects{Prefix: n.prefix}.Refresh(appid), kv.EncodeRefreshRequest(req))
		return err
	})
	if errors.Is(err, nats.ErrNoResponders) {
		if here, ok := readCopy(ctx, nc.Conn, n.bucket); ok {
			return fmt.Errorf("no refresher answers: the refresher is the hub's, and %s", describeCopy(here, n.bucket, false))
		}
		return errors.New("no refresher answers (is `wxtoken serve` running against this NATS?)")
	}
	if err != nil {
		return describeNATSError(err)
	}
	var reply kv.RefreshReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return fmt.Errorf("undecodable reply %q", msg.Data)
	}
	if reply.Error != nil {
		if reply.Revision > 0 {
			return fmt.Errorf("%s: %s (current revision %d, expires %s)", reply.Error.Code, reply.Error.Message,
				reply.Revision, reply.ExpiresAt.Format(time.RFC3339))
		}
		return fmt.Errorf("%s: %s", reply.Error.Code, reply.Error.Message)
	}
	fmt.Fprintf(stdout, "%s: %s; revision %d, expires %s\n", appid, refreshOutcome(appid, req.StaleRevision, reply),
		reply.Revision, reply.ExpiresAt.Format(time.RFC3339))
	return nil
}

// refreshOutcome says what the refresher did with a request that named
// stale (nil: none), and why when it kept the value it had.
func refreshOutcome(key string, stale *uint64, reply kv.RefreshReply) string {
	_, kind := kv.SplitKey(key)
	ticket := kind == kv.KindJSAPITicket || kind == kv.KindWxCardTicket || kind == kv.KindAgentConfigTicket
	switch {
	case reply.Refreshed:
		return "refreshed"
	case stale == nil:
		return "not refreshed: the current value is valid and no revision was named as rejected (--force names the current one)"
	case *stale < reply.Revision:
		return fmt.Sprintf("not refreshed: revision %d was already replaced by a newer one", *stale)
	case ticket:
		return "not refreshed: WeChat gave the same ticket again, as it does until a ticket expires"
	}
	why := "not refreshed: WeChat still accepts this token (the refresher asked it with getcallbackip), so it stays"
	if key == demoAppID || key == demoStableAppID {
		why += "; `wxtoken demo reject " + key + "` makes the demo's fake WeChat reject it"
	}
	return why
}

// tokenStatus is one row of `wxtoken status`.
type tokenStatus struct {
	AppID     string    `json:"appid"` // the key: an appid, or "<appid>.<kind>"
	Kind      string    `json:"kind"`  // access_token, jsapi_ticket, wx_card_ticket
	API       string    `json:"api"`   // the WeChat API that issued it
	Revision  uint64    `json:"revision"`
	FetchedAt time.Time `json:"fetched_at,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
	Error     string    `json:"error,omitempty"`
}

func status(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	var n natsFlags
	var asJSON, withPlatforms, withQuota bool
	var platformBucket, regions string
	c := newCommand("status", "", `Show every token and ticket in the bucket: its kind and the API that issued
it, revision, age (for a ticket, since its value first appeared), time to
expiry, why it was last rotated, and which replica leads; then every live
replica, and the apps each cannot lead from where it stands (its probes'
verdicts: IP not whitelisted, secret wrong or frozen) with the fix; and, for
each app whose token another system holding its AppSecret ended, the last
such token. With --quota, each app's quota per API path as the leader last
read it from WeChat (limit, used, remaining, ours, others) and the last
calls another party made. With --platforms,
each third-party platform's verify ticket and number of authorizers too
(that needs the refresher's NATS user: the platform bucket is its alone).
In a region, against the region's NATS, it reads the region's copy and says
when that last heard from the hub; with --regions, at the hub, it asks each
region about its copy.`,
		"  wxtoken status\n  wxtoken status --json | jq '.tokens[] | select(.error)'\n  wxtoken status --quota\n  wxtoken status --platforms --nats-user refresher\n  wxtoken status --regions shanghai,shenzhen")
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket)
	c.Bool(&asJSON, "json", "", false, "print JSON instead of a table")
	c.Bool(&withPlatforms, "platforms", "", false, "show the third-party platforms' verify tickets and authorizer counts")
	c.Bool(&withQuota, "quota", "", false, "show each app's quota per API path, as the leader last read it, and another party's calls")
	c.String(&platformBucket, "platform-bucket", "WXTOKEN_PLATFORM_BUCKET", kv.DefaultPlatformBucket, "name of the platform KV bucket (with --platforms)")
	c.String(&regions, "regions", "WXTOKEN_REGIONS", "", "the regions (JetStream domains, comma-separated) to ask about their copies of the bucket")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	for _, r := range splitList(regions) {
		if err := region.ValidateDomain(r); err != nil {
			return usagef("--regions: %v", err)
		}
	}
	nc, err := n.connect("wxtoken status")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	var rows []tokenStatus
	if err := nc.do(ctx, func(ctx context.Context) (err error) {
		rows, err = readAll(ctx, nc.Conn, n.bucket)
		return err
	}); err != nil {
		return err
	}
	// In a region the bucket is a copy, and the lease is the hub's.
	here, inRegion := readCopy(ctx, nc.Conn, n.bucket)
	var leader *kv.LeaseHolder // stays nil, "unknown", if this user may not read the lease
	nc.do(ctx, func(ctx context.Context) error {
		leader = readLeader(ctx, nc.Conn, n.bucket, here.Hub)
		return nil
	})
	replicas := readReplicas(ctx, nc.Conn, n.bucket, here.Hub)
	ledgers := readLedgers(ctx, nc.Conn, n.bucket)
	elsewhere := elsewhereRows(ledgers)
	var quota quotaStatus
	if withQuota {
		quota = quotaOf(ledgers)
	}
	rescues := rescueRows(ledgers)
	var regionRows []regionRow
	if regions != "" {
		regionRows = readRegions(ctx, nc.Conn, n.bucket, splitList(regions))
	}
	platforms := []platformRow{}
	var noPlatforms string // why there are none: no platform bucket, which is no error
	if withPlatforms {
		if err := nc.do(ctx, func(ctx context.Context) error {
			b, err := bindPlatform(ctx, nc.Conn, platformBucket)
			if errors.Is(err, errNoPlatformBucket) {
				noPlatforms = err.Error()
				return nil
			}
			if err != nil {
				return err
			}
			platforms, _, err = readPlatforms(ctx, b, "")
			return err
		}); err != nil {
			return err
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := map[string]any{"bucket": n.bucket, "leader": leader, "tokens": rows, "replicas": replicas, "invalidated_elsewhere": elsewhere, "quota_rescues": rescues}
		if inRegion {
			out["region"] = newCopyJSON(here)
		}
		if regions != "" {
			out["regions"] = regionRows
		}
		if withQuota {
			out["quota"] = quota
		}
		if withPlatforms {
			out["platforms"] = platforms
		}
		if noPlatforms != "" {
			out["platforms_note"] = noPlatforms
		}
		return enc.Encode(out)
	}
	leaderName := "none"
	switch {
	case leader == nil:
		leaderName = "unknown"
	case leader.Instance != "":
		leaderName = leader.Instance
	}
	if inRegion {
		fmt.Fprintln(stdout, describeCopy(here, n.bucket, false))
	}
	printRegions(stdout, regionRows, n.bucket)
	now := time.Now()
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tKIND\tAPI\tREVISION\tAGE\tEXPIRES IN\tREASON\tLEADER")
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t-\t-\t%s\t%s\n", r.AppID, r.Kind, r.API, r.Revision, r.Error, leaderName)
			continue
		}
		expires := r.ExpiresAt.Sub(now).Round(time.Second).String()
		if !now.Before(r.ExpiresAt) {
			expires = "EXPIRED"
		}
		reason := r.Reason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.AppID, r.Kind, r.API, r.Revision, now.Sub(r.FetchedAt).Round(time.Second), expires, reason, leaderName)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := printElsewhere(stdout, elsewhere, now); err != nil {
		return err
	}
	if withQuota {
		if err := printQuota(stdout, quota, now); err != nil {
			return err
		}
	}
	if err := printRescues(stdout, rescues, now); err != nil {
		return err
	}
	if err := printReplicas(stdout, replicas, now); err != nil || !withPlatforms {
		return err
	}
	fmt.Fprintln(stdout)
	if noPlatforms != "" {
		fmt.Fprintf(stdout, "platforms: none: %s\n", noPlatforms)
		return nil
	}
	return printPlatforms(stdout, platforms, now)
}

// readLeader returns the lease holder: an empty one when no replica leads,
// nil when the lease cannot be read (no permission, or a hub out of
// reach). The lease is in the JetStream domain hub, or in the one nc is
// connected to when hub is empty.
func readLeader(ctx context.Context, nc *nats.Conn, bucket, hub string) *kv.LeaseHolder {
	js, err := jetstream.New(nc)
	if hub != "" {
		js, err = jetstream.NewWithDomain(nc, hub)
	}
	if err != nil {
		return nil
	}
	b, err := js.KeyValue(ctx, kv.LeaseBucket(bucket))
	if err != nil {
		return nil
	}
	e, err := b.Get(ctx, kv.LeaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return &kv.LeaseHolder{}
	}
	if err != nil {
		return nil
	}
	h, err := kv.DecodeLeaseHolder(e.Value())
	if err != nil {
		return nil
	}
	return &h
}

// readAll reads every token record of the bucket with one watch.
func readAll(ctx context.Context, nc *nats.Conn, bucket string) ([]tokenStatus, error) {
	b, err := bindBucket(ctx, nc, bucket)
	if err != nil {
		return nil, err
	}
	entries, err := readBucket(ctx, b)
	if err != nil {
		return nil, err
	}
	var rows []tokenStatus
	for _, e := range entries {
		if kv.ValidateKey(e.Key()) != nil {
			continue // a force budget, or a kind this version does not know
		}
		row := tokenStatus{AppID: e.Key(), Kind: kindOf(e.Key()), Revision: e.Revision()}
		if rec, err := kv.DecodeCredential(e.Key(), e.Value()); err != nil {
			row.Error = err.Error()
		} else {
			row.FetchedAt, row.ExpiresAt, row.Reason = rec.FetchedAt, rec.ExpiresAt, rec.Reason
			row.API = apiOf(e.Key(), rec)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// readBucket reads every value of b, or of the keys filters match, with
// kv.ReadAll; an error says what NATS refused, or that the time ran out.
func readBucket(ctx context.Context, b jetstream.KeyValue, filters ...string) ([]jetstream.KeyValueEntry, error) {
	entries, err := kv.ReadAll(ctx, b, filters...)
	switch {
	case err == nil:
		return entries, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("reading bucket %s: %w", b.Bucket(), ctx.Err())
	}
	return nil, describeNATSError(err)
}

// kindOf names the kind of a key for `wxtoken status`.
func kindOf(key string) string {
	if _, kind := kv.SplitKey(key); kind != kv.KindToken {
		return kind
	}
	return "access_token"
}

// apiOf names the WeChat API that issued a key's value.
func apiOf(key string, rec kv.Credential) string {
	_, _, wecom := kv.SplitWeComKey(key)
	switch _, kind := kv.SplitKey(key); {
	case kind != kv.KindToken && wecom:
		return "wecom_ticket"
	case kind != kv.KindToken:
		return "getticket"
	case rec.API != "":
		return rec.API
	}
	return "token"
}
