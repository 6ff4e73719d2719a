package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// elsewhereRow is, for `wxtoken status`, the last token of an app that
// another party holding its AppSecret ended, as its ledger records it.
type elsewhereRow struct {
	AppID string `json:"appid"`
	kv.Elsewhere
}

// readLedgers returns the apps' ledgers, which the status shows the
// guardian's findings from; a ledger that cannot be read is left out (the
// status is about tokens; the ledgers only add to it).
func readLedgers(ctx context.Context, nc *nats.Conn, bucket string) []kv.Ledger {
	b, err := bindBucket(ctx, nc, bucket)
	if err != nil {
		return nil
	}
	entries, err := readBucket(ctx, b, "*."+kv.KindLedger)
	if err != nil {
		return nil
	}
	var ledgers []kv.Ledger
	for _, e := range entries {
		appid, _ := kv.SplitKey(e.Key())
		if l, err := kv.DecodeLedger(appid, e.Value()); err == nil {
			ledgers = append(ledgers, l)
		}
	}
	return ledgers
}

// elsewhereRows returns the last token ended by another party of each app
// whose ledger records one.
func elsewhereRows(ledgers []kv.Ledger) []elsewhereRow {
	rows := []elsewhereRow{}
	for _, l := range ledgers {
		if l.Elsewhere != nil {
			rows = append(rows, elsewhereRow{AppID: l.AppID, Elsewhere: *l.Elsewhere})
		}
	}
	return rows
}

// printElsewhere prints the rows of readElsewhere, if there are any.
func printElsewhere(w io.Writer, rows []elsewhereRow, now time.Time) error {
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ntokens killed by someone else (another system uses the AppSecret: see the README, \"Tokens killed by someone else\"):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APPID\tLAST\tREVISION\tBEFORE EXPIRY\tTIMES")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s ago (%s)\t%d\t%s\t%d\n", r.AppID, now.Sub(r.At).Round(time.Second), r.At.UTC().Format(time.RFC3339),
			r.Revision, time.Duration(r.BeforeExpirySeconds)*time.Second, r.Count)
	}
	return tw.Flush()
}
