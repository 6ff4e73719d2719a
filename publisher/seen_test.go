package publisher

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestSeenKeepsTheLast20FailuresScrubbed: of 25 failure events the page
// keeps the last 20, newest first, each errmsg scrubbed once it is shown.
func TestSeenKeepsTheLast20FailuresScrubbed(t *testing.T) {
	scrubs := 0
	s := newSeen(func(text string) string { scrubs++; return strings.ReplaceAll(text, "SECRET", "[REDACTED]") })
	for i := range 25 {
		data, _ := json.Marshal(kv.FailureEvent{AppID: fmt.Sprintf("wxseen%012d", i), ErrCode: 40164, ErrMsg: "ip with SECRET"})
		s.failed(&nats.Msg{Data: data})
	}
	got := s.lastFailures()
	if len(got) != maxFailuresShown || got[0].AppID != "wxseen000000000024" || got[19].AppID != "wxseen000000000005" {
		t.Fatalf("kept %d, from %s to %s; want 20, from the 25th to the 6th", len(got), got[0].AppID, got[len(got)-1].AppID)
	}
	for _, ev := range got {
		if ev.ErrMsg != "ip with [REDACTED]" {
			t.Errorf("%s: errmsg %q, not scrubbed", ev.AppID, ev.ErrMsg)
		}
	}
	s.lastFailures()
	if scrubs != maxFailuresShown {
		t.Errorf("%d scrubs for 20 events shown twice, want 20: one per event kept", scrubs)
	}
}

// TestSeenNotesAppsThatNeedALook: an app whose ledger in the bucket
// records another party's fetches is noted, one with a plain ledger is
// not, and the note goes when the ledger becomes plain, undecodable or
// deleted; a token's key is no ledger.
func TestSeenNotesAppsThatNeedALook(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, js := natstest.JetStream(t)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "seen"})
	if err != nil {
		t.Fatal(err)
	}
	const appid, plainApp = "wxseen000000000001", "wxseen000000000002"
	s := newSeen(func(text string) string { return text })
	put := func(key string, data []byte) {
		t.Helper()
		if _, err := b.Put(ctx, key, data); err != nil {
			t.Fatal(err)
		}
		e, err := b.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		s.observe(e)
	}
	ledger := func(appid string, foreign bool) []byte {
		l := kv.Ledger{AppID: appid}
		l.Count("token", time.Now(), true)
		if foreign {
			l.Foreign = &kv.ForeignFetch{At: time.Now(), Path: "/cgi-bin/token", Others: 3, Count: 1}
		}
		data, err := kv.EncodeLedger(l)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	noted := func(t *testing.T, want ...string) {
		t.Helper()
		if got := s.notableApps(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("apps noted: %v, want %v", got, want)
		}
	}
	put(kv.LedgerKey(appid), ledger(appid, true))
	put(kv.LedgerKey(plainApp), ledger(plainApp, false))
	put(appid, []byte(`{"access_token":"x"}`))
	noted(t, appid)
	put(kv.LedgerKey(appid), ledger(appid, false))
	noted(t)
	put(kv.LedgerKey(appid), ledger(appid, true))
	put(kv.LedgerKey(appid), []byte("not json"))
	noted(t)
	put(kv.LedgerKey(appid), ledger(appid, true))
	if err := b.Delete(ctx, kv.LedgerKey(appid)); err != nil {
		t.Fatal(err)
	}
	w, err := b.Watch(ctx, kv.LedgerKey(appid))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e != nil {
			s.observe(e) // the delete marker, as the follower delivers it
			break
		}
	}
	noted(t)
}
