package kv_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/test/testenv"
)

const platformApp = "wx0000000000000c0a"

func platformBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	js, _ := jetstream.New(testenv.Connect(t, testenv.NATS(t).ClientURL()))
	b, err := js.CreateKeyValue(testenv.Context(t, 10*time.Second), jetstream.KeyValueConfig{Bucket: kv.DefaultPlatformBucket, History: 16})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ticketAt(n int) kv.VerifyTicket {
	at := time.Unix(1_800_000_000+int64(n)*600, 0)
	return kv.VerifyTicket{ComponentAppID: platformApp, Ticket: "ticket@@@" + string(rune('A'+n%26)) + time.Duration(n).String(),
		CreateTime: at, ReceivedAt: at.Add(time.Second)}
}

// TestStoreNewerTicketKeepsTheNewestPushWhateverTheOrder: replicas store
// the pushes they received at once, in any order; the bucket ends with the
// push of the latest CreateTime, and an older one never replaces it.
func TestStoreNewerTicketKeepsTheNewestPushWhateverTheOrder(t *testing.T) {
	b := platformBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const pushes = 40
	order := rand.Perm(pushes)
	var wg sync.WaitGroup
	for _, n := range order {
		wg.Go(func() {
			if _, err := kv.StoreNewerTicket(ctx, b, ticketAt(n)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	e, err := b.Get(ctx, kv.VerifyTicketKey(platformApp))
	if err != nil {
		t.Fatal(err)
	}
	got, err := kv.DecodeVerifyTicket(platformApp, e.Value())
	if want := ticketAt(pushes - 1); err != nil || got.Ticket != want.Ticket || !got.CreateTime.Equal(want.CreateTime) {
		t.Fatalf("after %d pushes stored at once: %+v %v, want the newest, %+v", pushes, got, err, want)
	}
	if stored, err := kv.StoreNewerTicket(ctx, b, ticketAt(3)); stored || err != nil {
		t.Errorf("an older push: stored %v, %v; want it refused", stored, err)
	}
	if stored, err := kv.StoreNewerTicket(ctx, b, ticketAt(pushes)); !stored || err != nil {
		t.Errorf("a newer push: stored %v, %v", stored, err)
	}
}

func TestVerifyTicketRecordIsChecked(t *testing.T) {
	good, _ := kv.EncodeVerifyTicket(ticketAt(1))
	if _, err := kv.DecodeVerifyTicket("wx00000000000000ff", good); err == nil {
		t.Error("a record of another platform was taken")
	}
	for _, bad := range []kv.VerifyTicket{
		{ComponentAppID: "not an appid", Ticket: "t", CreateTime: time.Now(), ReceivedAt: time.Now()},
		{ComponentAppID: platformApp, Ticket: "", CreateTime: time.Now(), ReceivedAt: time.Now()},
		{ComponentAppID: platformApp, Ticket: "has space", CreateTime: time.Now(), ReceivedAt: time.Now()},
		{ComponentAppID: platformApp, Ticket: "t"},
	} {
		if _, err := kv.EncodeVerifyTicket(bad); err == nil {
			t.Errorf("EncodeVerifyTicket(%+v) was taken", bad)
		}
	}
	for _, data := range []string{"", "{", `{"component_appid":"` + platformApp + `"}`, "[]"} {
		if _, err := kv.DecodeVerifyTicket(platformApp, []byte(data)); err == nil {
			t.Errorf("DecodeVerifyTicket(%q) was taken", data)
		}
	}
}

// TestAuthorizerNeverPrintsItsSecrets: however a record is printed or
// logged, its refresh token and code stay out.
func TestAuthorizerNeverPrintsItsSecrets(t *testing.T) {
	a := kv.Authorizer{ComponentAppID: platformApp, AppID: "wx00000000000a0001", RefreshToken: "refreshtoken@@@secret",
		Code: "queryauthcode@@@secret", IssuedAt: time.Unix(1_800_000_000, 0)}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("record", "authorizer", a)
	for _, out := range []string{fmt.Sprint(a), fmt.Sprintf("%+v", a), fmt.Sprintf("%#v", a), fmt.Sprintf("%v", []kv.Authorizer{a}), logged.String()} {
		if strings.Contains(out, "@@@secret") || !strings.Contains(out, "wx00000000000a0001") {
			t.Errorf("printed as %q", out)
		}
	}
}

// TestRecordPlatformKeepsTheFirstTime: a platform's record says since when
// a refresher first served it; recording it again (another replica, a
// restart) keeps that time.
func TestRecordPlatformKeepsTheFirstTime(t *testing.T) {
	b := platformBucket(t)
	ctx := testenv.Context(t, 10*time.Second)
	first := time.Date(2026, 12, 1, 8, 0, 0, 0, time.FixedZone("CST", 8*3600))
	for i, at := range []time.Time{first, first.Add(time.Hour)} {
		wrote, err := kv.RecordPlatform(ctx, b, platformApp, at)
		if err != nil || wrote != (i == 0) {
			t.Fatalf("record %d: wrote %v, %v", i, wrote, err)
		}
	}
	e, err := b.Get(ctx, kv.PlatformKey(platformApp))
	if err != nil {
		t.Fatal(err)
	}
	p, err := kv.DecodeConfiguredPlatform(platformApp, e.Value())
	if err != nil || !p.ConfiguredAt.Equal(first) || p.ConfiguredAt.Location() != time.UTC {
		t.Errorf("record %+v, %v; want the first time, in UTC", p, err)
	}
	if c, ok := kv.SplitPlatformKey(e.Key()); !ok || c != platformApp {
		t.Errorf("SplitPlatformKey(%q) = %q, %v", e.Key(), c, ok)
	}
	for _, bad := range []string{`{"component_appid":"` + platformApp + `"}`, `{"component_appid":"wx0000000000000bad","configured_at":"2026-12-01T00:00:00Z"}`, `[]`} {
		if _, err := kv.DecodeConfiguredPlatform(platformApp, []byte(bad)); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}
