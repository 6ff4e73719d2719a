package kv

import (
	"errors"
	"testing"
	"time"
)

// TestLedgerRescue: a ledger's rescue goes through the codec whole, a
// clone shares none of its maps, and each field out of the contract is
// refused.
func TestLedgerRescue(t *testing.T) {
	l := Ledger{AppID: "wx1234567890abcdef", Day: "2026-12-07", Month: "2026-12",
		Calls: map[string]int{"quota_clear": 1}, MonthCalls: map[string]int{"quota_clear": 1},
		Rescue: &Rescue{At: time.Date(2026, 12, 7, 7, 0, 3, 0, time.UTC), Path: "/cgi-bin/token", API: "quota_clear",
			Outcome: "rescued", Count: 1, Rescued: map[string]string{"/cgi-bin/token": "2026-12-07"},
			SpentElsewhere: map[string]string{"clear_quota": "2026-12"}, Unverified: "2026-11"}}
	data, err := EncodeLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeLedger(l.AppID, data)
	if err != nil {
		t.Fatal(err)
	}
	if r := back.Rescue; r == nil || r.Rescued["/cgi-bin/token"] != "2026-12-07" || r.SpentElsewhere["clear_quota"] != "2026-12" ||
		r.Unverified != "2026-11" || r.API != "quota_clear" || r.Count != 1 {
		t.Errorf("decoded rescue %+v, want %+v", back.Rescue, l.Rescue)
	}

	c := l.Clone()
	c.Rescue.Rescued["/cgi-bin/stable_token"] = "2026-12-07"
	c.Rescue.SpentElsewhere["quota_clear"] = "2026-12"
	if len(l.Rescue.Rescued) != 1 || len(l.Rescue.SpentElsewhere) != 1 {
		t.Error("a clone's rescue shares its maps with the original")
	}

	for name, spoil := range map[string]func(*Rescue){
		"path":            func(r *Rescue) { r.Path = "cgi-bin/token" },
		"api":             func(r *Rescue) { r.API = "Quota Clear" },
		"count":           func(r *Rescue) { r.Count = -1 },
		"rescued path":    func(r *Rescue) { r.Rescued = map[string]string{"token": "2026-12-07"} },
		"rescued day":     func(r *Rescue) { r.Rescued = map[string]string{"/cgi-bin/token": "12/07"} },
		"spent elsewhere": func(r *Rescue) { r.SpentElsewhere = map[string]string{"clear_quota": "2026-12-07"} },
		"unverified":      func(r *Rescue) { r.Unverified = "December" },
	} {
		bad := l.Clone()
		spoil(bad.Rescue)
		if _, err := EncodeLedger(bad); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("%s: %v, want ErrInvalidRecord", name, err)
		}
	}
}
