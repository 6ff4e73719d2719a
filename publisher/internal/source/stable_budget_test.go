package source

import (
	"errors"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

func TestForceBudgetRoundTrip(t *testing.T) {
	b := forceBudget{AppID: "wx1234567890abcdef", Day: "2026-12-01", Used: 3, Last: time.Date(2026, 12, 1, 1, 2, 3, 0, time.UTC)}
	data, err := encodeForceBudget(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"appid":"wx1234567890abcdef","day":"2026-12-01","used":3,"last":"2026-12-01T01:02:03Z"}`; string(data) != want {
		t.Fatalf("encoded %s, want %s", data, want)
	}
	got, err := decodeForceBudget(b.AppID, data)
	if err != nil || got != b {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	if forceBudgetKey(b.AppID) != "wx1234567890abcdef.force_budget" {
		t.Fatalf("key %s", forceBudgetKey(b.AppID))
	}
}

func TestForceBudgetRefusesWhatIsNotOne(t *testing.T) {
	for name, data := range map[string]string{
		"garbage":     `not json`,
		"other app":   `{"appid":"wxother","day":"2026-12-01","used":1}`,
		"no day":      `{"appid":"wxapp","used":1}`,
		"bad day":     `{"appid":"wxapp","day":"1 Dec","used":1}`,
		"negative":    `{"appid":"wxapp","day":"2026-12-01","used":-1}`,
		"bad appid":   `{"appid":"wx.app","day":"2026-12-01","used":1}`,
		"wrong types": `{"appid":"wxapp","day":"2026-12-01","used":"1"}`,
	} {
		if _, err := decodeForceBudget("wxapp", []byte(data)); !errors.Is(err, kv.ErrInvalidRecord) {
			t.Errorf("%s: error %v, want kv.ErrInvalidRecord", name, err)
		}
	}
}
