package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/kv"
)

// TestGuardianPlanLeavesEachDisturbanceAControlWindow: at every day length
// the part accepts, the four disturbances are in distinct two-hour slots,
// each after its slot's foreign fetch was due to be reported (one hour
// after it) and with its control window ended before the next fetch and
// before the day does.
func TestGuardianPlanLeavesEachDisturbanceAControlWindow(t *testing.T) {
	for _, hours := range []int{guardianMinDay, 14, 24, 48} {
		fetches, disturbances := guardianPlan(hours, true)
		if len(fetches) != hours/2 || len(disturbances) != 4 {
			t.Fatalf("%dh: %d fetches and %d disturbances, want %d and 4", hours, len(fetches), len(disturbances), hours/2)
		}
		restarts := 0
		for i, d := range disturbances {
			if d.nats {
				restarts++
			}
			if i > 0 && d.at <= disturbances[i-1].at {
				t.Errorf("%dh: disturbance %d at %s, not after the one before", hours, i, d.at)
			}
			slot := int(d.at / foreignEvery)
			if d.at-fetches[slot] < time.Hour {
				t.Errorf("%dh: disturbance at %s, less than one --quota-every after the fetch at %s", hours, d.at, fetches[slot])
			}
			windowEnd := d.at + controlWindow
			if windowEnd > time.Duration(hours)*time.Hour || (slot+1 < len(fetches) && windowEnd > fetches[slot+1]) {
				t.Errorf("%dh: the control window after %s ends at %s, past the next fetch or the day", hours, d.at, windowEnd)
			}
		}
		if restarts != 1 {
			t.Errorf("%dh: %d NATS restarts, want 1", hours, restarts)
		}
	}
	if _, disturbances := guardianPlan(6, false); disturbances != nil {
		t.Errorf("the baseline's plan has disturbances %v", disturbances)
	}
}

// TestGuardianJudgesFalseReports: a foreign_fetch event counting more than
// was fetched, or no more than an earlier one, is false; one that counts a
// new fetch is not, and its delay is taken; an invalidated_elsewhere event
// in a control window is false.
func TestGuardianJudgesFalseReports(t *testing.T) {
	start := time.Now().Add(-time.Minute)
	g := &guardianRig{scale: scaleOf(10 * time.Second), start: start}
	g.fetchedAt = []time.Time{start, start.Add(time.Second)}
	event := func(ev kv.FailureEvent) {
		data, _ := json.Marshal(ev)
		g.judge(&nats.Msg{Data: data})
	}
	event(kv.FailureEvent{Class: kv.ClassForeignFetch, Others: 1})
	event(kv.FailureEvent{Class: kv.ClassForeignFetch, Others: 2})
	if len(g.result.falseReports) != 0 || g.result.reported != 2 || len(g.result.delays) != 2 {
		t.Fatalf("two true reports: false %v, reported %d, delays %v", g.result.falseReports, g.result.reported, g.result.delays)
	}
	event(kv.FailureEvent{Class: kv.ClassForeignFetch, Others: 2})
	event(kv.FailureEvent{Class: kv.ClassForeignFetch, Others: 3})
	if len(g.result.falseReports) != 2 || !strings.Contains(g.result.falseReports[0], "reported already") || !strings.Contains(g.result.falseReports[1], "3, 2 made") {
		t.Fatalf("a repeat and an overcount: false reports %q", g.result.falseReports)
	}
	event(kv.FailureEvent{Class: kv.ClassInvalidatedElsewhere})
	if len(g.result.falseReports) != 2 {
		t.Fatalf("an invalidated_elsewhere outside any control window judged false: %q", g.result.falseReports)
	}
	g.controls = append(g.controls, [2]time.Time{time.Now().Add(-time.Second), time.Now().Add(time.Minute)})
	event(kv.FailureEvent{Class: kv.ClassInvalidatedElsewhere})
	if len(g.result.falseReports) != 3 || !strings.Contains(g.result.falseReports[2], "control window") {
		t.Fatalf("an invalidated_elsewhere in a control window: false reports %q", g.result.falseReports)
	}
}
