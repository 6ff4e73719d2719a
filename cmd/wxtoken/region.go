package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/region"
	"github.com/wxtoken/wxtoken/kv"
)

const regionOverview = `Usage: wxtoken region add [flags]

A region is a NATS server (or cluster) with a JetStream domain of its own,
joined to the hub's NATS by a leaf connection (nats-region.conf). Its
services read the tokens from the region's own copy of the token bucket,
through a partition too, and their refresh requests cross to the hub's
leader.
  add   create the region's copy of the hub's token bucket

Run "wxtoken region add --help" for its flags and examples.
`

func regionCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("need a subcommand, add (see wxtoken region --help)")
	}
	switch args[0] {
	case "add":
		return regionAdd(args[1:], getenv, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, regionOverview)
		return errHelp
	}
	return usagef("unknown subcommand %q: use add (see wxtoken region --help)", args[0])
}

// regionAddTimeout bounds region add: a copy of a large bucket takes a
// moment to come across a WAN.
const regionAddTimeout = 60 * time.Second

func regionAdd(args []string, getenv func(string) string, stdout io.Writer) error {
	var n natsFlags
	var hub, keys string
	var replicas int
	c := newCommand("region add", "", `Create the region's read-only copy of the hub's token bucket, against the
region's NATS, as a user that may create streams there (admin): a mirror of
the hub's bucket, named like it, so that services in the region bind it and
read it as they do at the hub, with no option. It returns once the copy
holds what the hub's bucket holds, and says so; run again, it finds the copy
there and says how it is. The region is the JetStream domain of the NATS it
runs against; --hub-domain names the hub's.`,
		`  NATS_URL=nats://nats.shanghai.internal:4222 NATS_USER=admin \
    wxtoken region add --hub-domain hub
  # only two apps, and the tickets of the first
  wxtoken region add --hub-domain hub --keys wx1234567890abcdef,wx1234567890abcdef.>,wx0987654321fedcba`)
	n.register(c, "the region's NATS server URLs (default "+nats.DefaultURL+")", withBucket|withSubject)
	c.String(&hub, "hub-domain", "WXTOKEN_HUB_DOMAIN", "", "the hub's JetStream domain (required)")
	c.String(&keys, "keys", "", "", "comma-separated keys to copy, or patterns with NATS wildcards (APPID.> is an app's\ntickets); default every key")
	c.Int(&replicas, "replicas", "", 1, "replicas of the copy in the region (3 in a 3-node region cluster)")
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 0:
		return usagef("unexpected argument %q", rest[0])
	case hub == "":
		return usagef("--hub-domain is required: the hub's JetStream domain (jetstream { domain: ... } in the hub's nats.conf)")
	case replicas < 1:
		return usagef("--replicas %d: give 1, or 3 in a 3-node region cluster", replicas)
	}
	nc, err := n.connect("wxtoken region add")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), regionAddTimeout)
	defer cancel()
	cfg := region.Config{Hub: hub, Bucket: n.bucket, Subjects: kv.Subjects{Prefix: n.prefix}, Keys: splitList(keys), Replicas: replicas}
	var copied region.Copy
	if err := nc.do(ctx, func(ctx context.Context) (err error) {
		copied, err = region.Add(ctx, nc.Conn, cfg)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintln(stdout, describeCopy(copied, n.bucket, true))
	if copied.Durable {
		fmt.Fprintln(stdout, "It follows the hub's bucket through a durable consumer of the hub's, which it takes up again the moment a partition heals.")
	} else {
		fmt.Fprintln(stdout, "It follows the hub's bucket through an ephemeral consumer, as with nats-server before 2.15 (here or at the hub): "+
			"after a partition longer than 10 s it may take a minute or more to catch up. nats-server 2.15 or newer, at the hub and here, "+
			"catches up the moment the link is back: upgrade, delete the copy and add it again.")
	}
	fmt.Fprintf(stdout, "It republishes each value on %s, as the refresher does at the hub: services here follow their keys as they do there.\n",
		kv.Subjects{Prefix: n.prefix}.Value(">"))
	return nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// outOfReach is how long a copy may go without hearing from the hub before
// status calls the hub out of reach: the hub's mirror heartbeat comes every
// second (5 s before nats-server 2.10.15), and the server gives up on it
// after 10 s.
const outOfReach = 10 * time.Second

// describeCopy says in one line what a region's copy of bucket is and how
// current it is. full adds what it holds.
func describeCopy(c region.Copy, bucket string, full bool) string {
	var b strings.Builder
	name := "this region"
	if c.Region != "" {
		name = "region " + c.Region
	}
	fmt.Fprintf(&b, "%s: a copy of the hub's %s (domain %s), ", name, bucket, c.Hub)
	if len(c.Keys) == 0 {
		b.WriteString("every key")
	} else {
		fmt.Fprintf(&b, "keys %s", strings.Join(c.Keys, ","))
	}
	if full {
		fmt.Fprintf(&b, ", holding %d values", c.Values)
	}
	switch {
	case c.Heard < 0:
		b.WriteString("; it has never heard from the hub")
	default:
		fmt.Fprintf(&b, "; last heard from the hub %s ago, %d values behind", c.Heard.Round(100*time.Millisecond), c.Behind)
	}
	if c.Problem != "" {
		fmt.Fprintf(&b, "; %s", c.Problem)
	}
	if c.Heard < 0 || c.Heard > outOfReach {
		b.WriteString(": the hub is out of reach (the leaf connection is down or stalled): what rotates there meanwhile " +
			"reaches this region when it is back, and refresh requests get no answer until then")
	}
	return b.String()
}

// readCopy returns the state of the region's copy if the bucket bound
// through nc's JetStream is one.
func readCopy(ctx context.Context, nc *nats.Conn, bucket string) (region.Copy, bool) {
	js, err := jetstream.New(nc)
	if err != nil {
		return region.Copy{}, false
	}
	c, err := region.Ask(ctx, js, bucket)
	return c, err == nil
}

// copyJSON is a region's copy in `wxtoken status --json`.
type copyJSON struct {
	Region           string   `json:"region,omitempty"`
	Hub              string   `json:"hub"`
	Keys             []string `json:"keys,omitempty"` // none: every key
	Republishes      bool     `json:"republishes"`
	Values           uint64   `json:"values"`
	Behind           uint64   `json:"behind"`
	LastHeardSeconds float64  `json:"last_heard_seconds"` // -1: never
	Problem          string   `json:"problem,omitempty"`
}

func newCopyJSON(c region.Copy) *copyJSON {
	heard := -1.0
	if c.Heard >= 0 {
		heard = c.Heard.Seconds()
	}
	return &copyJSON{Region: c.Region, Hub: c.Hub, Keys: c.Keys, Republishes: c.Republishes, Values: c.Values,
		Behind: c.Behind, LastHeardSeconds: heard, Problem: c.Problem}
}

// regionRow is a region's line in `wxtoken status --regions`.
type regionRow struct {
	Region string       `json:"region"`
	copied *region.Copy // nil: no answer
	Copy   *copyJSON    `json:"copy,omitempty"`
	Error  string       `json:"error,omitempty"`
}

// readRegions asks each region, through its JetStream domain, about its
// copy of bucket.
func readRegions(ctx context.Context, nc *nats.Conn, bucket string, regions []string) []regionRow {
	rows := make([]regionRow, 0, len(regions))
	for _, r := range regions {
		row := regionRow{Region: r}
		js, err := jetstream.NewWithDomain(nc, r)
		if err == nil {
			var c region.Copy
			if c, err = region.Ask(ctx, js, bucket); err == nil {
				c.Region = r
				row.copied, row.Copy = &c, newCopyJSON(c)
			}
		}
		if err != nil {
			row.Error = err.Error()
		}
		rows = append(rows, row)
	}
	return rows
}

// printRegions prints each region's line.
func printRegions(w io.Writer, rows []regionRow, bucket string) {
	for _, r := range rows {
		if r.copied == nil {
			fmt.Fprintf(w, "region %s: no answer from its copy of %s (%s): a partition, or no copy there (wxtoken region add)\n", r.Region, bucket, r.Error)
			continue
		}
		fmt.Fprintln(w, describeCopy(*r.copied, bucket, false))
	}
}
