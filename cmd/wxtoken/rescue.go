package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/wxtoken/wxtoken/internal/quotastate"
	"github.com/wxtoken/wxtoken/kv"
)

// rescueRow is, for `wxtoken status`, the last rescue of an app's spent
// quota and the resets spent this month, as its ledger records them.
type rescueRow struct {
	AppID string `json:"appid"`
	kv.Rescue
	// This China month's resets, counted before each was made: of one
	// path (quota/clear, 50 a month), of the account (clear_quota,
	// clear_quota/v2 and a platform's component forms of both, 10 a month
	// with the console's).
	Month         string `json:"month"`
	PathResets    int    `json:"quota_clear_spent"`
	AccountResets int    `json:"clear_quota_spent"`
}

// rescueRows returns the last rescue of each app whose ledger records
// one.
func rescueRows(ledgers []kv.Ledger) []rescueRow {
	rows := []rescueRow{}
	for _, l := range ledgers {
		state := quotastate.Of(l)
		if state.Rescue == nil {
			continue
		}
		rows = append(rows, rescueRow{AppID: state.AppID, Rescue: *state.Rescue, Month: state.Month,
			PathResets: state.PathResets, AccountResets: state.AccountResets})
	}
	return rows
}

// printRescues prints the rows of readRescues, if there are any.
func printRescues(w io.Writer, rows []rescueRow, now time.Time) error {
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nspent quotas (see the README, \"A spent quota, rescued\"):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APPID\tLAST\tPATH\tOUTCOME\tRESET\tRESCUES\tRESETS THIS MONTH")
	for _, r := range rows {
		reset := r.API
		if reset == "" {
			reset = "-"
		}
		fmt.Fprintf(tw, "%s\t%s ago (%s)\t%s\t%s\t%s\t%d\tquota_clear %d/50, clear_quota %d/10 (%s)\n", r.AppID, now.Sub(r.At).Round(time.Second),
			r.At.UTC().Format(time.RFC3339), r.Path, r.Outcome, reset, r.Count, r.PathResets, r.AccountResets, r.Month)
	}
	return tw.Flush()
}
