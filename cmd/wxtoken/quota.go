package main

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/wxtoken/wxtoken/internal/quotastate"
	"github.com/wxtoken/wxtoken/kv"
)

// quotaRow is, for `wxtoken status --quota`, the leader's last reading of
// WeChat's quota/get for one app and API path, as the app's ledger holds it.
type quotaRow struct {
	AppID string `json:"appid"`
	Path  string `json:"cgi_path"`
	kv.QuotaReading
}

// foreignRow is the last time another party's calls of an app were seen
// to grow.
type foreignRow struct {
	AppID string `json:"appid"`
	kv.ForeignFetch
}

// quotaStatus is what status --quota adds.
type quotaStatus struct {
	Readings []quotaRow   `json:"readings"`
	Foreign  []foreignRow `json:"foreign_fetches"`
}

// quotaOf returns every app's readings and last foreign fetch, from the
// ledgers, ordered by app and path.
func quotaOf(ledgers []kv.Ledger) quotaStatus {
	s := quotaStatus{Readings: []quotaRow{}, Foreign: []foreignRow{}}
	for _, l := range ledgers {
		state := quotastate.Of(l)
		for _, r := range state.Readings { // ordered by path
			s.Readings = append(s.Readings, quotaRow{AppID: state.AppID, Path: r.Path, QuotaReading: r.QuotaReading})
		}
		if state.Foreign != nil {
			s.Foreign = append(s.Foreign, foreignRow{AppID: state.AppID, ForeignFetch: *state.Foreign})
		}
	}
	sort.SliceStable(s.Readings, func(i, j int) bool { return s.Readings[i].AppID < s.Readings[j].AppID })
	sort.Slice(s.Foreign, func(i, j int) bool { return s.Foreign[i].AppID < s.Foreign[j].AppID })
	return s
}

// printQuota prints the readings as a table, then the last foreign fetch
// of each app that had one.
func printQuota(w io.Writer, s quotaStatus, now time.Time) error {
	fmt.Fprintln(w, "\nquota per API path, as WeChat's quota/get last said (see the README, \"Another party's fetches, counted\"):")
	if len(s.Readings) == 0 {
		fmt.Fprintln(w, "none read yet (the leader asks every --quota-every; 0 turns it off)")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "APPID\tPATH\tLIMIT\tUSED\tREMAINING\tOURS\tOTHERS\tREAD")
		for _, r := range s.Readings {
			limit := fmt.Sprint(r.DailyLimit)
			if r.DailyLimit == 0 {
				limit = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s ago (%s)\n", r.AppID, r.Path, limit, r.Used, r.Remain, r.Ours, r.Others,
				now.Sub(r.At).Round(time.Second), r.At.UTC().Format(time.RFC3339))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(s.Foreign) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ncalls by another party holding the AppSecret, last seen growing:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APPID\tLAST\tPATH\tOTHERS THAT DAY\tTIMES")
	for _, f := range s.Foreign {
		fmt.Fprintf(tw, "%s\t%s ago (%s)\t%s\t%d\t%d\n", f.AppID, now.Sub(f.At).Round(time.Second), f.At.UTC().Format(time.RFC3339), f.Path, f.Others, f.Count)
	}
	return tw.Flush()
}
