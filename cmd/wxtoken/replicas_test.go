package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// TestStatusShowsAReplicaStillProbing: a replica whose first round of
// probes is under way shows how far it got ("12/30"), so that its partial
// CANNOT LEAD is not read as its count; one whose probes are off shows
// "-".
func TestStatusShowsAReplicaStillProbing(t *testing.T) {
	now := time.Now()
	var out strings.Builder
	err := printReplicas(&out, []kv.ReplicaState{
		{Instance: "host-1", At: now, Standing: true, Leading: true, Probed: 30, Configured: 30, CannotLead: 10},
		{Instance: "host-2", At: now, Standing: true, Probed: 12, Configured: 30, CannotLead: 12},
		{Instance: "host-3", At: now, Standing: true},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`(?m)^host-1\s+leader\s+30/30\s+10\s`, `(?m)^host-2\s+standby\s+12/30\s+12\s`, `(?m)^host-3\s+standby\s+-\s+0\s`} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("status does not match %s:\n%s", want, out.String())
		}
	}
}
