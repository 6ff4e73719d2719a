package test

import (
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// marker is in every AppSecret of this test: finding it anywhere is a leak.
const marker = "S3CR3T"

// TestSecretAppearsNowhere drives the refresher through the failures that
// tend to leak an AppSecret (an unreachable WeChat, whose *url.Error would
// print the URL; a refused fetch; a timeout; a transport that panics with
// the URL; a panic inside the cron job) and then looks for the secret in
// every log line, every NATS message any client published, and every value
// in the buckets.
func TestSecretAppearsNowhere(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	srv := testenv.NATS(t)
	spy := testenv.Connect(t, srv.ClientURL())
	var messages syncBuffer
	if _, err := spy.Subscribe(">", func(m *nats.Msg) {
		fmt.Fprintf(&messages, "%s %v %s\n", m.Subject, m.Header, m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	spy.Flush()

	const (
		unreachable = "wxunreachable00001"
		refused     = "wxrefused000000002"
		slow        = "wxslow000000000003"
		exploding   = "wxexploding0000004"
		healthy     = "wxhealthy000000005"
	)
	fake, url := testenv.WeChat(t, fakewechat.Config{})
	var apps []publisher.App
	for _, id := range []string{unreachable, refused, slow, exploding, healthy} {
		secret := marker + "-of-" + id
		fake.AddApp(id, secret)
		apps = append(apps, publisher.App{AppID: id, Secret: publisher.NewSecret(secret)})
	}
	// A proxy on the way that echoes the request into the error message.
	fake.Fail(refused, fakewechat.Fault{ErrCode: 40164, ErrMsg: "invalid ip, not in whitelist; request had secret=" + marker + "-of-" + refused})
	fake.Fail(slow, fakewechat.Fault{Delay: time.Hour})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := ln.Addr().String()
	ln.Close()

	// One client for all apps, failing per app the way the network would.
	var tried sync.Map
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		appid := r.URL.Query().Get("appid")
		tried.Store(appid, true)
		switch appid {
		case unreachable:
			r.URL.Host = closedAddr
		case exploding:
			panic(fmt.Sprintf("transport exploded on %s", r.URL))
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	// A clock that panics, with a secret in the panic, inside the cron job.
	var armed atomic.Bool
	clock := func() time.Time {
		if armed.Load() && calledFrom("publisher/internal/loop.(*Credentials).check") && armed.CompareAndSwap(true, false) {
			panic("clock broke while the job held " + marker + "-of-" + healthy)
		}
		return time.Now()
	}
	logs := newNotifyingBuffer()
	t.Cleanup(func() {
		if t.Failed() { // what the refresher did says why; its secrets are the test's markers
			t.Logf("the refresher's log:\n%s", logs.String())
		}
	})
	testenv.Refresher(t, testenv.Connect(t, srv.ClientURL()), publisher.Config{
		Apps: apps, UpstreamURL: url, HTTPClient: client, UpstreamTimeout: 300 * time.Millisecond,
		Schedule: "@every 1s", Clock: publisher.Clock{Now: clock}, Logger: textLogger(logs),
		RetryBackoff: 50 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond,
	})
	nc := testenv.Connect(t, srv.ClientURL())
	entries := testenv.Entries(t, testenv.Bucket(t, ctx, nc), healthy)
	testenv.Next(t, ctx, entries)

	// Every app's failure has happened at least once (the failures that
	// never reach the fake show in the log); then every app is asked for a
	// refresh, so that errors travel back over NATS too.
	for _, id := range []string{refused, slow} {
		if err := fake.WaitCalls(ctx, id, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{unreachable, exploding} {
		if err := logs.waitFor(ctx, "appid="+id); err != nil {
			t.Fatalf("no failure of %s logged: %v", id, err)
		}
	}
	for _, a := range apps {
		rev := uint64(0)
		request(t, ctx, nc, a.AppID, kv.RefreshRequest{StaleRevision: &rev, Reason: "40001"})
	}
	armed.Store(true)
	if err := logs.waitFor(ctx, "cron: panic"); err != nil {
		t.Fatalf("the cron job's panic was not logged: %v", err)
	}
	if err := logs.waitFor(ctx, "recovered from a panic"); err != nil {
		t.Fatalf("the transport's panic was not logged: %v", err)
	}

	var values strings.Builder
	js, _ := jetstream.New(nc)
	for _, bucket := range []string{kv.DefaultBucket, kv.LeaseBucket(kv.DefaultBucket)} {
		b, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := b.Keys(ctx)
		for _, k := range keys {
			if e, err := b.Get(ctx, k); err == nil {
				fmt.Fprintf(&values, "%s/%s %s\n", bucket, k, e.Value())
			}
		}
	}
	spy.Flush()
	for where, text := range map[string]string{"logs": logs.String(), "NATS messages": messages.String(), "KV values": values.String()} {
		if i := strings.Index(text, marker); i >= 0 {
			t.Errorf("the AppSecret is in the %s: ...%s...", where, text[max(0, i-200):min(len(text), i+50)])
		}
	}
	for _, line := range append(logs.linesWith("cron: panic"), logs.linesWith("recovered from a panic")...) {
		if !strings.Contains(line, "[REDACTED]") {
			t.Errorf("panic logged without the secret's redaction: %.300s", line)
		}
	}
	if !strings.Contains(messages.String(), "40164") || !strings.Contains(logs.String(), "connection refused") {
		t.Error("the failures did not happen: the test proves nothing")
	}
}

// calledFrom reports whether fn is on the caller's stack.
func calledFrom(fn string) bool {
	pcs := make([]uintptr, 32)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, fn) {
			return true
		}
		if !more {
			return false
		}
	}
}
