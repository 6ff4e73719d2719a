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

// TestSeenFollowsLedgers: a ledger written to the bucket is kept, one
// deleted or undecodable is dropped, and a token's key is not a ledger.
func TestSeenFollowsLedgers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, js := natstest.JetStream(t)
	b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "seen"})
	if err != nil {
		t.Fatal(err)
	}
	const appid = "wxseen000000000001"
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
	l := kv.Ledger{AppID: appid}
	l.Count("token", time.Now(), true)
	l.Foreign = &kv.ForeignFetch{At: time.Now(), Path: "/cgi-bin/token", Others: 3, Count: 1}
	data, err := kv.EncodeLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	put(kv.LedgerKey(appid), data)
	if got, ok := s.ledger(appid); !ok || got.Foreign == nil || got.Foreign.Others != 3 {
		t.Fatalf("ledger kept: %v %+v; want the one written", ok, got)
	}
	put(appid, []byte(`{"access_token":"x"}`))
	if len(s.ledgers) != 1 {
		t.Errorf("a token's key was taken for a ledger: %v", s.ledgers)
	}
	put(kv.LedgerKey(appid), []byte("not json"))
	if _, ok := s.ledger(appid); ok {
		t.Error("an undecodable ledger is still shown")
	}
	put(kv.LedgerKey(appid), data)
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
	if _, ok := s.ledger(appid); ok {
		t.Error("a deleted ledger is still shown")
	}
}
