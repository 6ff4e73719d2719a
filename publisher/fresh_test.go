package publisher

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/internal/natstest"
	"github.com/wxtoken/wxtoken/kv"
)

// TestFreshDeploymentLeadsAtOnceBesideALedger: a bucket that holds an
// app's ledger but no token is a fresh deployment's. Every replica's
// probes count their calls in the ledger at start, before any replica
// leads (a first `serve` writes it itself, moments before it campaigns),
// so the first replica must still take the lease at once rather than
// leave a new lease bucket alone for a lease TTL: a minute here, longer
// than the test may run.
func TestFreshDeploymentLeadsAtOnceBesideALedger(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const appid, secret = "wxfresh00000000001", "the-secret-of-a-fresh-app"
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp(appid, secret)
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	nc, js := natstest.JetStream(t)

	// A probe's count, as the replica's own probe (or one of a replica
	// that died before any led) leaves it.
	b, err := bucket.Open(ctx, js, bucket.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ledger := kv.Ledger{AppID: appid}
	ledger.Count("stable_token", time.Now(), false)
	data, err := kv.EncodeLedger(ledger)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, kv.LedgerKey(appid), data); err != nil {
		t.Fatal(err)
	}

	logs := newAwaitedLog()
	r, err := New(nc, Config{Apps: []App{{AppID: appid, Secret: NewSecret(secret)}}, UpstreamURL: wechat.URL,
		LeaseTTL: time.Minute, UpstreamTimeout: time.Second, Instance: "first",
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(run) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	logs.await(t, ctx, `msg="token rotated" appid=`+appid, 1)
	if strings.Contains(logs.String(), "leaving it for one lease TTL") {
		t.Errorf("a fresh deployment waited for a leader that cannot exist:\n%s", logs.String())
	}
	if _, err := b.Get(ctx, appid); err != nil {
		t.Errorf("the first token is not in the bucket: %v", err)
	}
}
