// Package region makes and reads a region's copy of the token bucket.
//
// A region is a NATS server (or cluster), nats-server 2.10 or newer, with
// a JetStream domain of its own, joined to the hub's NATS by a leaf
// connection. Its copy is a KV mirror of the hub's bucket, in the region's
// domain and named like it, so that services there bind "wechat_tokens" as
// they do at the hub and read it with direct gets and watches served by
// the region's own servers, through a partition too. The copy republishes
// each value it stores on the value subject, the message the refresher
// publishes at the hub (kv.DecodeValueMsg reads both): a value crosses the
// WAN once per region, inside the mirror, and a region that was cut off
// hands its services what it missed the moment it catches up.
//
// With nats-server 2.15 or newer at the hub and in the region, the copy
// follows a durable consumer of the hub's (consumer.go), which the region
// takes up again the moment the leaf connection is back; the ephemeral
// consumer of older servers is made again only on a backoff that, after a
// partition longer than 10 s, leaves the copy behind for tens of seconds
// more. The lease, the writable bucket and the refresh endpoint stay in
// the hub.
//
// Add creates a copy (wxtoken region add), Of reads one's state from its
// stream info (wxtoken status), and Monitor follows the copies from the
// hub (wxtoken_region_lag_seconds).
package region

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// Config says which copy Add makes.
type Config struct {
	Hub      string      // the hub's JetStream domain
	Bucket   string      // the token bucket; kv.DefaultBucket
	Subjects kv.Subjects // where values are published
	// Keys are the keys the copy holds, each a key or a pattern with NATS
	// wildcards ("wx1234567890abcdef.>" is its tickets); none: every key.
	Keys     []string
	Replicas int // of the copy in the region; 1
}

// regionMetadata names the region in its copy's metadata, for status.
const regionMetadata = "wxtoken.region"

// Copy is what a region's copy of the token bucket says of itself.
type Copy struct {
	Region      string        // the region's JetStream domain ("" when the copy does not say)
	Hub         string        // the hub's domain it copies
	Keys        []string      // the keys it holds, as patterns; none: every key
	Republishes bool          // it republishes the values it stores on the value subjects
	Durable     bool          // it follows the hub through a durable consumer of the hub's, taken up again at once after a partition
	Values      uint64        // messages it holds
	Behind      uint64        // values it still lacked when it last heard from the hub
	Heard       time.Duration // since it last heard from the hub (a value, or the heartbeat every second or few); -1: never
	Problem     string        // what JetStream says keeps it from the hub, if anything

	consumer *jetstream.StreamConsumerSource // its durable consumer at the hub, if any
}

// Current reports whether the copy held every value of the hub's bucket
// when it last heard from it.
func (c Copy) Current() bool { return c.Heard >= 0 && c.Behind == 0 && c.Problem == "" }

// Of reads the state of a region's copy from its stream's info; ok is
// false when the stream is not one (the hub's bucket, say).
func Of(info *jetstream.StreamInfo) (c Copy, ok bool) {
	hub, ok := bucket.CopyOf(info)
	if !ok {
		return Copy{}, false
	}
	m := info.Config.Mirror
	c = Copy{
		Region:      info.Config.Metadata[regionMetadata],
		Hub:         hub,
		Keys:        filterKeys(m),
		Republishes: info.Config.RePublish != nil,
		Durable:     m.Consumer != nil,
		Values:      info.State.Msgs,
		Heard:       -1,
		consumer:    m.Consumer,
	}
	if mi := info.Mirror; mi != nil {
		c.Behind = mi.Lag
		if mi.Active >= 0 {
			c.Heard = mi.Active
		}
		if mi.Error != nil {
			c.Problem = mi.Error.Description
		}
	}
	return c, true
}

// ValidateDomain checks the name of a JetStream domain: one token of a
// NATS subject, as the domain is in $JS.<domain>.API.
func ValidateDomain(domain string) error {
	if domain == "" || strings.ContainsAny(domain, ". *>\t\r\n") {
		return fmt.Errorf("JetStream domain %q: write a domain as nats-server's jetstream { domain: ... } has it, one word such as hub", domain)
	}
	return nil
}

// apiPrefix is the API of the JetStream domain domain.
func apiPrefix(domain string) string { return "$JS." + domain + ".API" }

// Errors of Add that say what to do.
var (
	// ErrNoDomain: the region's NATS has no JetStream domain of its own.
	ErrNoDomain = errors.New("region: this NATS server has no JetStream domain: a region's NATS needs one of its own " +
		"(jetstream { domain: shanghai }, as nats-region.conf has), joined to the hub by a leaf connection")
	// ErrHubUnreachable: the hub's bucket cannot be reached from the region.
	ErrHubUnreachable = errors.New("region: the hub's bucket cannot be reached from this NATS")
)

// Add creates the copy of the hub's token bucket in the region whose NATS
// nc is connected to, and returns once it holds what the hub's holds. A
// copy that is there already, made the same way, is left as it is (and
// waited for the same way); one made otherwise is an error that says how
// to replace it.
func Add(ctx context.Context, nc *nats.Conn, cfg Config) (Copy, error) {
	cfg = cfg.withDefaults()
	if err := ValidateDomain(cfg.Hub); err != nil {
		return Copy{}, fmt.Errorf("region: %w", err)
	}
	filters, err := keySubjects(cfg.Bucket, cfg.Keys)
	if err != nil {
		return Copy{}, err
	}
	version := nc.ConnectedServerVersion()
	if !atLeast(version, 2, 10) {
		// Seen with Debian's 2.9.10: the mirror runs, and the region's
		// JetStream answers no request from then on.
		return Copy{}, fmt.Errorf("region: a region's NATS needs nats-server 2.10 or newer, and this one is %s: "+
			"its JetStream stops answering once a copy of another domain's bucket runs (the hub may stay on 2.9)", version)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return Copy{}, fmt.Errorf("region: %w", err)
	}
	region, err := ownDomain(ctx, js, cfg.Hub)
	if err != nil {
		return Copy{}, err
	}
	hubJS, err := jetstream.NewWithDomain(nc, cfg.Hub)
	if err != nil {
		return Copy{}, fmt.Errorf("region: %w", err)
	}
	hub, err := hubBucket(ctx, hubJS, cfg)
	if err != nil {
		return Copy{}, err
	}
	newest, err := newestSequence(ctx, hubJS, cfg.Bucket, filters)
	if err != nil {
		return Copy{}, err
	}
	var durable *jetstream.StreamConsumerSource
	if atLeast(version, 2, 15) {
		if durable, err = ensureConsumer(ctx, hubJS, region, cfg.Bucket, filters); err != nil {
			return Copy{}, err
		}
	}
	want := copyConfig(cfg, region, hub, filters, durable)
	if err := create(ctx, js, cfg, want); err != nil {
		return Copy{}, err
	}
	return awaitCurrent(ctx, js, cfg.Bucket, region, newest)
}

func (c Config) withDefaults() Config {
	c.Bucket = cmp.Or(c.Bucket, kv.DefaultBucket)
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	return c
}

// ownDomain returns the JetStream domain of the region's NATS, and refuses
// a NATS without one, or the hub's own.
func ownDomain(ctx context.Context, js jetstream.JetStream, hub string) (string, error) {
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return "", fmt.Errorf("region: ask this NATS for its JetStream domain (the NATS user needs $JS.API.INFO): %w", err)
	}
	switch info.Domain {
	case "":
		return "", ErrNoDomain
	case hub:
		return "", fmt.Errorf("region: this NATS is the hub's (its JetStream domain is %q): run region add against the region's NATS", hub)
	}
	return info.Domain, nil
}

// leafSettles is how long a hub's JetStream that does not answer yet is
// asked again: a leaf connection that has just come up carries the
// interest in the hub's API a moment after it.
const leafSettles = 3 * time.Second

// hubBucket returns the configuration of the hub's bucket, reached through
// js, the hub's JetStream.
func hubBucket(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.StreamConfig, error) {
	var stream jetstream.Stream
	var err error
	for settled := time.Now().Add(leafSettles); ; {
		stream, err = js.Stream(ctx, bucket.StreamName(cfg.Bucket))
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(settled) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return jetstream.StreamConfig{}, fmt.Errorf("region: the hub (domain %q) has no bucket %q: start wxtoken serve at the hub first", cfg.Hub, cfg.Bucket)
	case err != nil:
		return jetstream.StreamConfig{}, fmt.Errorf("%w: through domain %q (%v): is the leaf connection to the hub up, "+
			"is %q the hub's JetStream domain, and may this NATS user ask %s.STREAM.INFO.%s?",
			ErrHubUnreachable, cfg.Hub, err, cfg.Hub, apiPrefix(cfg.Hub), bucket.StreamName(cfg.Bucket))
	}
	hub := stream.CachedInfo().Config
	if hub.Mirror != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("region: the bucket %q of domain %q is itself a copy: name the hub's domain", cfg.Bucket, cfg.Hub)
	}
	return hub, nil
}

// atLeast reports whether a nats-server of version is major.minor or
// newer. 2.10 republishes what a mirror stores (nats-server#4010) and
// filters a mirror by several subjects; 2.15 takes a mirror's durable
// consumer up again the moment it hears from it (nats-server#8323).
func atLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	gotMajor, err1 := strconv.Atoi(parts[0])
	gotMinor, err2 := strconv.Atoi(parts[1])
	return err1 == nil && err2 == nil && (gotMajor > major || gotMajor == major && gotMinor >= minor)
}

// copyConfig is the stream of the copy: a KV bucket's, as nats.go makes
// one, mirroring the hub's bucket, named like it, keeping what it keeps.
// Not nats.go's CreateKeyValue, which sets mirror_direct on a mirror: that
// would make the copy answer the direct gets of a stream of its own name a
// second time, which nothing across domains needs.
func copyConfig(cfg Config, region string, hub jetstream.StreamConfig, filters []string, durable *jetstream.StreamConsumerSource) jetstream.StreamConfig {
	mirror := &jetstream.StreamSource{
		Name:     bucket.StreamName(cfg.Bucket),
		External: &jetstream.ExternalStream{APIPrefix: apiPrefix(cfg.Hub)},
		Consumer: durable,
	}
	switch {
	case len(filters) == 1:
		mirror.FilterSubject = filters[0]
	case len(filters) > 1:
		for _, f := range filters {
			mirror.SubjectTransforms = append(mirror.SubjectTransforms, jetstream.SubjectTransformConfig{Source: f, Destination: f})
		}
	}
	c := jetstream.StreamConfig{
		Name:              bucket.StreamName(cfg.Bucket),
		Description:       fmt.Sprintf("wxtoken: region %s's read-only copy of the hub's %s (domain %s)", region, cfg.Bucket, cfg.Hub),
		MaxMsgsPerSubject: max(min(hub.MaxMsgsPerSubject, jetstream.KeyValueMaxHistory), 1),
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxMsgSize:        hub.MaxMsgSize,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		Discard:           jetstream.DiscardNew,
		AllowRollup:       true,
		DenyDelete:        true,
		AllowDirect:       true,
		Mirror:            mirror,
		RePublish:         &jetstream.RePublish{Source: "$KV." + cfg.Bucket + ".>", Destination: cfg.Subjects.Value(">")},
		Metadata:          kv.Metadata(cfg.Subjects),
	}
	c.Metadata[regionMetadata] = region
	return c
}

// create creates the copy, or checks that the one there is made the same
// way.
func create(ctx context.Context, js jetstream.JetStream, cfg Config, want jetstream.StreamConfig) error {
	stream, err := js.Stream(ctx, bucket.StreamName(cfg.Bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, want); err != nil {
			return fmt.Errorf("region: create the copy %q: %w", cfg.Bucket, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("region: look for a bucket %q here: %w", cfg.Bucket, err)
	}
	return sameCopy(stream.CachedInfo(), cfg, want)
}

// sameCopy reports how an existing bucket differs from the copy wanted,
// and what to do about it, or nil.
func sameCopy(info *jetstream.StreamInfo, cfg Config, want jetstream.StreamConfig) error {
	replace := fmt.Sprintf("delete it (nats kv del %s, against this region's NATS: services here read nothing until it is back) and add it again", cfg.Bucket)
	have, ok := Of(info)
	switch {
	case !ok:
		return fmt.Errorf("region: this region has a bucket %q of its own, not a copy of the hub's "+
			"(a refresher run here without --hub-domain %s?): stop what writes it, %s", cfg.Bucket, cfg.Hub, replace)
	case have.Hub != cfg.Hub:
		return fmt.Errorf("region: the bucket %q here copies domain %q, not %q: %s", cfg.Bucket, have.Hub, cfg.Hub, replace)
	case !slices.Equal(have.Keys, filterKeys(want.Mirror)):
		return fmt.Errorf("region: the copy %q here holds the keys %s, not %s: %s", cfg.Bucket,
			describeKeys(have.Keys), describeKeys(filterKeys(want.Mirror)), replace)
	}
	return nil
}

func describeKeys(keys []string) string {
	if len(keys) == 0 {
		return "every key"
	}
	return strings.Join(keys, ",")
}

// newestSequence is the sequence of the newest message of the hub's bucket
// that a copy holding filters (none: every key) holds; 0 when it has none.
func newestSequence(ctx context.Context, hub jetstream.JetStream, bucketName string, filters []string) (uint64, error) {
	stream, err := hub.Stream(ctx, bucket.StreamName(bucketName))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrHubUnreachable, err)
	}
	if len(filters) == 0 {
		filters = []string{"$KV." + bucketName + ".>"}
	}
	var newest uint64
	for _, subject := range filters {
		m, err := stream.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return 0, fmt.Errorf("%w: read the newest message of %s: %v", ErrHubUnreachable, subject, err)
		default:
			newest = max(newest, m.Sequence)
		}
	}
	return newest, nil
}

// awaitCurrent waits until the copy has heard from the hub and holds every
// value the hub's bucket held when Add began: up to the hub's sequence
// newest, which a copy keeps. The mirror's own lag is not enough: a copy
// just made has heard from the hub, and reports no lag, a moment before
// the first value reaches it.
func awaitCurrent(ctx context.Context, js jetstream.JetStream, name, region string, newest uint64) (Copy, error) {
	for {
		stream, err := js.Stream(ctx, bucket.StreamName(name))
		var c Copy
		var held uint64
		if err == nil {
			info := stream.CachedInfo()
			held = info.State.LastSeq
			c, _ = Of(info)
			c.Region = region
			if c.Current() && info.State.LastSeq >= newest {
				return c, nil
			}
		}
		select {
		case <-ctx.Done():
			why := cmp.Or(c.Problem, "it has not heard from the hub yet")
			if c.Current() {
				why = fmt.Sprintf("it holds the hub's values up to %d of %d", held, newest)
			}
			if err != nil {
				why = err.Error()
			}
			return c, fmt.Errorf("region: the copy %q is there, but not current: %s", name, why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// keySubjects are the subjects of the key patterns in bucket.
func keySubjects(bucket string, keys []string) ([]string, error) {
	var subjects []string
	for _, key := range keys {
		if err := validatePattern(key); err != nil {
			return nil, err
		}
		subjects = append(subjects, "$KV."+bucket+"."+key)
	}
	slices.Sort(subjects)
	return slices.Compact(subjects), nil
}

// validatePattern checks a key pattern: a key's tokens, of which any may
// be "*" and the last ">".
func validatePattern(pattern string) error {
	tokens := strings.Split(pattern, ".")
	for i, tok := range tokens {
		switch {
		case tok == "*", tok == ">" && i == len(tokens)-1:
		case tok == "" || strings.ContainsAny(tok, "*> \t\r\n"):
			return fmt.Errorf("region: key %q: write a key, or a pattern such as wx1234567890abcdef.> (its tickets)", pattern)
		}
	}
	return nil
}

// filterKeys are the key patterns of a copy's filter, sorted.
func filterKeys(m *jetstream.StreamSource) []string {
	var subjects []string
	if m.FilterSubject != "" {
		subjects = append(subjects, m.FilterSubject)
	}
	for _, tr := range m.SubjectTransforms {
		subjects = append(subjects, tr.Source)
	}
	keys := make([]string, 0, len(subjects))
	for _, s := range subjects {
		// $KV.<bucket>.<key>
		if parts := strings.SplitN(s, ".", 3); len(parts) == 3 {
			keys = append(keys, parts[2])
		}
	}
	slices.Sort(keys)
	return keys
}
