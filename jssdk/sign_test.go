package jssdk_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/wxtokentest"
)

func TestSignRefusesWhatItCannotSign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys := wxtokentest.Start(t, "wx1234567890abcdef")
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	token, err := subscriber.New(ctx, nc, "wx1234567890abcdef")
	if err != nil {
		t.Fatal(err)
	}
	defer token.Close()
	if _, err := jssdk.Sign(token, "https://shop.example.com/"); !errors.Is(err, jssdk.ErrNotJSAPITicket) {
		t.Errorf("signing with a token subscriber: %v, want ErrNotJSAPITicket", err)
	}
	card, err := subscriber.New(ctx, nc, "wx1234567890abcdef.wx_card_ticket")
	if err != nil {
		t.Fatal(err)
	}
	defer card.Close()
	if _, err := jssdk.Sign(card, "https://shop.example.com/"); !errors.Is(err, jssdk.ErrNotJSAPITicket) {
		t.Errorf("signing wx.config with the card ticket: %v, want ErrNotJSAPITicket", err)
	}
	ticket, err := subscriber.New(ctx, nc, "wx1234567890abcdef.jsapi_ticket")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jssdk.Sign(ticket, "/pay"); err == nil {
		t.Error("a relative page URL was signed")
	}
	ticket.Close()
	if _, err := jssdk.Sign(ticket, "https://shop.example.com/"); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("signing after Close: %v, want ErrClosed", err)
	}
}
