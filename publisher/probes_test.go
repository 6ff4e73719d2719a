package publisher

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// lockedBuffer is a log two goroutines may write.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestProbesReportEachChangeOnceWithTheFix: a replica whose calls go out
// from an address the app's whitelist lacks (Config.SourceAddr) learns it
// from its probe: one ERROR line naming the address to add, however often
// it probes, the metric at 0, Ready saying why, the state it publishes
// listing it; a probe that proves nothing keeps the verdict; once the
// address is whitelisted, one line says so and the metric is 1.
func TestProbesReportEachChangeOnceWithTheFix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const appid, secret = "wxprobe00000000001", "the-secret-of-the-probed-app"
	fake, srv := goodOnlyWeChat(t, appid, secret)

	var logs lockedBuffer
	reg := prometheus.NewRegistry()
	cfg := Config{ProbeEvery: time.Hour, SourceAddr: "127.0.0.3", Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg}
	wechat, err := upstream.New(srv.URL, cfg.upstreamHTTPClient(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	app := App{AppID: appid, Secret: NewSecret(secret)}
	p := newProbes(cfg, &reloader{wechat: wechat, configured: []App{app}, log: cfg.Logger})
	retries := map[string]time.Time{}

	for range 3 {
		p.probe(ctx, app, retries)
	}
	const fix = "add 127.0.0.3 to the IP whitelist of " + appid
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), "this replica cannot lead "+appid+": "+fix) {
		t.Errorf("%d ERROR lines after three refused probes, want one with the fix %q:\n%s", n, fix, logs.String())
	}
	if got := canLeadOf(t, reg, appid); got != 0 {
		t.Errorf("wxtoken_replica_can_lead = %v, want 0", got)
	}
	if err := p.problem(false); err == nil || !strings.Contains(err.Error(), "could not take over") || !strings.Contains(err.Error(), fix) {
		t.Errorf("Ready of a standby: %v, want it could not take over, and the fix", err)
	}
	probed, configured, apps, cannot := p.state()
	if probed != 1 || configured != 1 || cannot != 1 || len(apps) != 1 || apps[0].ErrCode != 40164 || apps[0].Address != "127.0.0.3" {
		t.Errorf("published state: probed %d of %d, cannot %d, %+v; want the app refused at 127.0.0.3", probed, configured, cannot, apps)
	}

	// WeChat out of reach proves nothing: the verdict stands, and the app
	// is probed again sooner than the interval.
	fake.Inject(appid, fakewechat.Fault{Status: 502})
	fake.SetWhitelist(appid, fakewechat.Whitelist{})
	p.probe(ctx, app, retries)
	if _, again := retries[appid]; !again || p.problem(false) == nil {
		t.Errorf("after a 502: retry %v, problem %v; want the verdict kept and a retry due", again, p.problem(false))
	}

	fake.SetWhitelist(appid, fakewechat.Whitelist{Allowed: []string{"127.0.0.3"}})
	p.probe(ctx, app, retries)
	p.probe(ctx, app, retries)
	if n := strings.Count(logs.String(), "this replica can lead "+appid+" again"); n != 1 {
		t.Errorf("%d lines saying the replica can lead again, want 1:\n%s", n, logs.String())
	}
	if got := canLeadOf(t, reg, appid); got != 1 || p.problem(false) != nil {
		t.Errorf("whitelisted: metric %v, problem %v; want 1 and none", got, p.problem(false))
	}
	if strings.Contains(logs.String(), secret) {
		t.Error("the secret is in the log")
	}
}

// TestProbesStartAtOnce: run probes every app at start, not one interval
// later.
func TestProbesStartAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fake := fakewechat.New(fakewechat.Config{})
	apps := []App{{AppID: "wxprobe00000000001", Secret: NewSecret("s1")}, {AppID: "wxprobe00000000002", Secret: NewSecret("s2")}}
	for _, a := range apps {
		fake.AddApp(a.AppID, a.Secret.Reveal())
	}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	wechat, err := upstream.New(srv.URL, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ProbeEvery: time.Hour, Logger: slog.New(slog.DiscardHandler)}
	p := newProbes(cfg, &reloader{wechat: wechat, configured: apps, log: cfg.Logger})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(runCtx)
	}()
	for {
		if probed, _, _, _ := p.state(); probed == len(apps) {
			break
		}
		select {
		case <-p.changed: // a verdict came
		case <-ctx.Done():
			t.Fatal("the apps were not all probed at start")
		}
	}
	stop()
	<-done
	if _, _, _, cannot := p.state(); cannot != 0 {
		t.Errorf("%d apps refused; want both accepted", cannot)
	}
}

// canLeadOf is what /metrics says of wxtoken_replica_can_lead{appid}.
func canLeadOf(t *testing.T, reg *prometheus.Registry, appid string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if f.GetName() == "wxtoken_replica_can_lead" && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == appid {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no wxtoken_replica_can_lead{appid=%q}", appid)
	return 0
}
