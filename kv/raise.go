package kv

import "maps"

// Raise adds to l what it lacks of high, a later view of the same ledger
// that a rollback lost (a restore of the bucket from a backup, the key
// deleted and written again): high's counts of l's China day and month
// where they are greater (or the whole day or month, where high's is
// later), its Since where earlier, its last call that ends the token where
// later, its record of a token ended elsewhere where it counts more, and
// its rescue where later. A rolled-back ledger would otherwise free a
// spent monthly budget, count fewer of the refresher's own calls than
// WeChat did (another party's, to the quota poller), and make a token the
// refresher ended look ended by another party. The quota readings are
// l's: the next reading replaces them.
func (l *Ledger) Raise(high Ledger) {
	if high.AppID != l.AppID {
		return
	}
	l.Day, l.Calls = raiseCounts(l.Day, l.Calls, high.Day, high.Calls)
	l.Month, l.MonthCalls = raiseCounts(l.Month, l.MonthCalls, high.Month, high.MonthCalls)
	if !high.Since.IsZero() && (l.Since.IsZero() || high.Since.Before(l.Since)) {
		l.Since = high.Since
	}
	switch {
	case high.LastEnding.After(l.LastEnding):
		l.LastEnding, l.LastEndingCalls = high.LastEnding, high.LastEndingCalls
	case high.LastEnding.Equal(l.LastEnding):
		l.LastEndingCalls = max(l.LastEndingCalls, high.LastEndingCalls)
	}
	if e := high.Elsewhere; e != nil && (l.Elsewhere == nil || e.Count > l.Elsewhere.Count) {
		c := *e
		l.Elsewhere = &c
	}
	if r := high.Rescue; r != nil && (l.Rescue == nil || r.At.After(l.Rescue.At)) {
		c := *r
		c.Rescued, c.SpentElsewhere = maps.Clone(r.Rescued), maps.Clone(r.SpentElsewhere)
		l.Rescue = &c
	}
}

// raiseCounts returns the counts of the later period of the two, or, of
// the same period, the greater count of each name.
func raiseCounts(period string, counts map[string]int, highPeriod string, highCounts map[string]int) (string, map[string]int) {
	switch {
	case highPeriod > period:
		return highPeriod, maps.Clone(highCounts)
	case highPeriod < period:
		return period, counts
	}
	for name, n := range highCounts {
		if n > counts[name] {
			if counts == nil {
				counts = map[string]int{}
			}
			counts[name] = n
		}
	}
	return period, counts
}
