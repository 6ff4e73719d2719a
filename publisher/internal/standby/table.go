package standby

import (
	"maps"
	"slices"
	"sync"
)

// Table holds the last verdict of each app this replica probed. It is
// safe for concurrent use.
type Table struct {
	mu       sync.Mutex
	verdicts map[string]Verdict // by appid
}

// Record keeps v as appid's verdict and reports whether the state changed:
// a first verdict, from can to cannot or back, or cannot for another
// reason (another errcode or address); had says whether there was a
// verdict before, last which. A verdict that only repeats the last is no
// change, so that what follows a change (a log line) happens once per
// change and not at every probe.
func (t *Table) Record(appid string, v Verdict) (last Verdict, had, changed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.verdicts == nil {
		t.verdicts = map[string]Verdict{}
	}
	last, had = t.verdicts[appid]
	t.verdicts[appid] = v
	return last, had, !had || last.OK != v.OK || last.ErrCode != v.ErrCode || last.Address != v.Address
}

// Keep forgets the apps not in appids (removed by a reload), and returns
// them.
func (t *Table) Keep(appids []string) (forgotten []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for appid := range t.verdicts {
		if !slices.Contains(appids, appid) {
			delete(t.verdicts, appid)
			forgotten = append(forgotten, appid)
		}
	}
	return forgotten
}

// AppVerdict is an app's verdict.
type AppVerdict struct {
	AppID string
	Verdict
}

// Summary returns how many of appids (the apps configured now) have a
// verdict, and the verdicts of those this replica cannot lead, by appid. A
// verdict on an app a reload removed, not yet forgotten by Keep, counts
// for nothing: it must not make a round look complete that has not judged
// an app added in its place.
func (t *Table) Summary(appids []string) (probed int, cannot []AppVerdict) {
	configured := make(map[string]bool, len(appids))
	for _, appid := range appids {
		configured[appid] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, appid := range slices.Sorted(maps.Keys(t.verdicts)) {
		if !configured[appid] {
			continue
		}
		probed++
		if v := t.verdicts[appid]; !v.OK {
			cannot = append(cannot, AppVerdict{appid, v})
		}
	}
	return probed, cannot
}
