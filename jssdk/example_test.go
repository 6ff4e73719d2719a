package jssdk_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/wxtokentest"
)

// A page's wx.config, signed with the jsapi_ticket in memory: follow the
// app's "<appid>.jsapi_ticket" key as any other, and sign per page view.
func ExampleSign() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, "wx1234567890abcdef")
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	ticket, err := subscriber.New(ctx, nc, "wx1234567890abcdef.jsapi_ticket")
	if err != nil {
		log.Fatal(err)
	}
	defer ticket.Close()

	config, err := jssdk.Sign(ticket, "https://shop.example.com/pay?order=42#top")
	if err != nil {
		log.Fatal(err)
	}
	// Hand config to the page as JSON: wx.config({...config, jsApiList: [...]}).
	want := jssdk.Signature(sys.JSAPITicket("wx1234567890abcdef"), config.NonceStr, config.Timestamp, "https://shop.example.com/pay?order=42")
	fmt.Println(config.AppID, config.Signature == want)
	// Output: wx1234567890abcdef true
}

// A backend serving many apps (a third-party platform's authorizers, say)
// follows them all with one subscriber.Set, and signs with any app's
// ticket through its Member.
func ExampleSign_set() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, "wx1234567890abcdef", "wxfedcba0987654321")
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	set, err := subscriber.NewSet(ctx, nc) // every key in the bucket
	if err != nil {
		log.Fatal(err)
	}
	defer set.Close()

	config, err := jssdk.Sign(set.Member("wxfedcba0987654321.jsapi_ticket"), "https://shop.example.com/pay?order=42")
	if err != nil {
		log.Fatal(err)
	}
	want := jssdk.Signature(sys.JSAPITicket("wxfedcba0987654321"), config.NonceStr, config.Timestamp, "https://shop.example.com/pay?order=42")
	fmt.Println(config.AppID, config.Signature == want)
	// Output: wxfedcba0987654321 true
}
