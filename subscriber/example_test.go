package subscriber_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/wechaterr"
	"github.com/wxtoken/wxtoken/subscriber"
)

// A service reads the token from memory and lets Transport handle WeChat's
// rejections.
func Example() {
	nc, err := nats.Connect(nats.DefaultURL, nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := subscriber.New(ctx, nc, "wx1234567890abcdef")
	if err != nil {
		log.Fatal(err) // no token within 10s: is the refresher running?
	}
	defer sub.Close()

	// Every call gets ?access_token=...; on 40001/40014/42001 the
	// transport asks the refresher for a new token and retries once.
	wechat := &http.Client{Transport: sub.Transport(nil), Timeout: 10 * time.Second}
	resp, err := wechat.Get("https://api.weixin.qq.com/cgi-bin/getcallbackip")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}

// Without Transport: read the token for each call, and report it when
// WeChat rejects it.
func ExampleSubscriber_Refresh() {
	var sub *subscriber.Subscriber // from subscriber.New
	ctx := context.Background()

	tok := sub.Token() // no I/O, no lock: call it for every request
	errcode := callWeChat(tok.Value)
	if wechaterr.TokenRejected(errcode) { // 40001, 40014 or 42001
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		fresh, err := sub.Refresh(ctx, tok.Revision)
		if err != nil {
			log.Print(err)
			return
		}
		callWeChat(fresh.Value)
	}
}

// Updated signals rotations, for a service that keeps derived state.
func ExampleSubscriber_Updated() {
	var sub *subscriber.Subscriber // from subscriber.New
	for range sub.Updated() {
		fmt.Println("new token at revision", sub.Token().Revision)
	}
}

func callWeChat(token string) (errcode int) { return 0 }
