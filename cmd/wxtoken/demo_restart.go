package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

// adoptHeld has the demo's fake WeChat take back the demo apps' tokens
// that the bucket still holds from the demo's last run. WeChat does not
// forget a token when its client restarts, but the fake lives and dies
// with serve --demo: without this, a restarted demo's fake would call the
// tokens in the bucket dead, and the refresher, which made no call that
// could end them, would say at ERROR that another party holding the
// AppSecret had. It runs before the refresher starts, and reads nothing
// of a first run, whose bucket does not exist yet.
func (d *demo) adoptHeld(nc *nats.Conn, bucket string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	b, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return
	}
	if err != nil {
		log.Warn("demo: cannot read the tokens of the demo's last run; the fake WeChat will not know them", "error", err)
		return
	}
	var adopted []string
	for _, app := range demoApps() {
		e, err := b.Get(ctx, app.AppID)
		if err != nil {
			continue
		}
		rec, err := kv.DecodeCredential(app.AppID, e.Value())
		if err != nil || !time.Now().Before(rec.ExpiresAt) {
			continue
		}
		d.fake.Adopt(app.AppID, rec.Value, rec.ExpiresAt, app.TokenAPI == publisher.TokenAPIStable)
		adopted = append(adopted, app.AppID)
	}
	if len(adopted) > 0 {
		log.Info("demo: the fake WeChat knows again the tokens of the demo's last run that the bucket holds, as WeChat would", "apps", strings.Join(adopted, ","))
	}
}
