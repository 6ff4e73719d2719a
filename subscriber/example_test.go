package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/wxtokentest"
)

const appID = "wx1234567890abcdef"

// callbackIP calls WeChat's getcallbackip with client and returns the
// errcode of the answer (0 for a list of addresses).
func callbackIP(client *http.Client, base, token string) int {
	url := base + "/cgi-bin/getcallbackip"
	if token != "" {
		url += "?access_token=" + token
	}
	resp, err := client.Get(url)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		ErrCode int      `json:"errcode"`
		IPList  []string `json:"ip_list"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		log.Fatal(err)
	}
	return answer.ErrCode
}

// The whole lifecycle: New waits for the first token, Transport puts it in
// every WeChat call and deals with a rejection, Close ends it. Here a
// wxtokentest.System stands in for NATS, WeChat and the refresher; in
// production nats.Connect names the NATS servers wxtoken serve uses, and
// the base URL is https://api.weixin.qq.com.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, appID) // in a test: wxtokentest.Start(t, appID)
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()

	nc, err := nats.Connect(sys.URL(), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	sub, err := subscriber.New(ctx, nc, appID) // waits for the first token
	if err != nil {
		log.Fatal(err) // no token within 10s: is the refresher running?
	}
	defer sub.Close()

	// Every call gets ?access_token=...; on 40001/40014/42001 the
	// transport asks the refresher for a new token and retries once.
	wechat := &http.Client{Transport: sub.Transport(nil), Timeout: 10 * time.Second}
	fmt.Println("errcode:", callbackIP(wechat, sys.WeChatURL(), ""))

	sys.Reject(appID) // someone else fetched a token: WeChat rejects ours
	fmt.Println("errcode after a rejection:", callbackIP(wechat, sys.WeChatURL(), ""))
	fmt.Println("the token is WeChat's newest:", sub.Token().Value == sys.Token(appID))
	fmt.Println("token fetches from WeChat:", sys.Fetches(appID))
	// Output:
	// errcode: 0
	// errcode after a rejection: 0
	// the token is WeChat's newest: true
	// token fetches from WeChat: 2
}

// Without Transport: read the token for each call, and report it when
// WeChat rejects it.
func ExampleSubscriber_Refresh() {
	sys, sub, stop := start()
	defer stop()

	sys.Reject(appID)
	tok := sub.Token() // no I/O, no lock: call it for every request
	errcode := callbackIP(http.DefaultClient, sys.WeChatURL(), tok.Value)
	if subscriber.TokenRejected(errcode) { // 40001, 40014 or 42001
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		fresh, err := sub.Refresh(ctx, tok.Revision) // names the token WeChat rejected
		if err != nil {
			log.Fatal(err)
		}
		errcode = callbackIP(http.DefaultClient, sys.WeChatURL(), fresh.Value)
	}
	fmt.Println("errcode:", errcode)
	// Output:
	// errcode: 0
}

// Current says when the token in memory cannot be used.
func ExampleSubscriber_Current() {
	_, sub, stop := start()
	defer stop()

	if _, err := sub.Current(); err == nil {
		fmt.Println("usable")
	}
	sub.Close()
	_, err := sub.Current()
	fmt.Println(err)
	// Output:
	// usable
	// subscriber: closed
}

// Updated signals rotations to a service that keeps derived state, and is
// closed by Close: the loop ends with the subscriber.
func ExampleSubscriber_Updated() {
	_, sub, stop := start()
	defer stop()

	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for range sub.Updated() {
			// rebuild what depends on sub.Token()
		}
	}()
	sub.Close()
	<-ended
	fmt.Println("the loop ended with the subscriber")
	// Output:
	// the loop ended with the subscriber
}

// OnRotate hands each new token to a callback, with the subscriber, on the
// subscriber's callback goroutine; the callback may call the subscriber,
// Close included.
func ExampleOnRotate() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, appID)
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	rotated := make(chan uint64, 4)
	sub, err := subscriber.New(ctx, nc, appID,
		subscriber.OnRotate(func(s *subscriber.Subscriber, tok subscriber.Token) { rotated <- tok.Revision }))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	first := <-rotated // the first token, once New has returned
	rev, err := sys.Rotate(ctx, appID)
	if err != nil {
		log.Fatal(err)
	}
	next := <-rotated
	fmt.Println("first, then the rotated one:", next > first && next == rev)
	// Output:
	// first, then the rotated one: true
}

// A third-party platform's backend serves every account that authorized
// the platform: one Set follows all their tokens (and tickets) on one
// subscription, each read with no I/O and no lock, and holds a new
// account's the moment the refresher stores it.
func ExampleNewSet() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The accounts' appids; in production, the platform's authorizers.
	sys, err := wxtokentest.New(ctx, "wxa00000000000a001", "wxa00000000000a002")
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Close()
	nc, err := nats.Connect(sys.URL(), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	set, err := subscriber.NewSet(ctx, nc) // every key in the bucket, and each new one
	if err != nil {
		log.Fatal(err)
	}
	defer set.Close()

	// A request for one account: its token, as Subscriber.Current gives it.
	if _, err := set.Current("wxa00000000000a001"); err == nil {
		fmt.Println("a001 usable")
	}
	// Its WeChat calls: the token put in, refreshed and retried on 40001.
	wechat := &http.Client{Transport: set.Transport("wxa00000000000a002", nil), Timeout: 10 * time.Second}
	sys.Reject("wxa00000000000a002")
	fmt.Println("a002 errcode after a rejection:", callbackIP(wechat, sys.WeChatURL(), ""))

	// An account authorizes the platform: the set holds it, without a restart.
	if err := sys.AddApps(ctx, "wxa00000000000a003"); err != nil {
		log.Fatal(err)
	}
	until(ctx, set, func() bool { return set.Token("wxa00000000000a003").Revision > 0 })
	fmt.Println("a003 held:", set.Token("wxa00000000000a003").Value == sys.Token("wxa00000000000a003"))

	// An account withdraws its authorization: its key is said removed.
	if err := sys.Withdraw(ctx, "wxa00000000000a001"); err != nil {
		log.Fatal(err)
	}
	until(ctx, set, func() bool { _, err := set.Current("wxa00000000000a001"); return err != nil })
	_, err = set.Current("wxa00000000000a001")
	fmt.Println("a001 removed:", errors.Is(err, subscriber.ErrRemoved))
	// Output:
	// a001 usable
	// a002 errcode after a rejection: 0
	// a003 held: true
	// a001 removed: true
}

// until waits until ok, looking again each time the set changes.
func until(ctx context.Context, set *subscriber.Set, ok func() bool) {
	for !ok() {
		select {
		case <-set.Updated():
		case <-ctx.Done():
			log.Fatal(ctx.Err())
		}
	}
}

// start runs a System for appID and a subscriber following it; stop ends
// them.
func start() (sys *wxtokentest.System, sub *subscriber.Subscriber, stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, appID)
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		log.Fatal(err)
	}
	if sub, err = subscriber.New(ctx, nc, appID); err != nil {
		log.Fatal(err)
	}
	return sys, sub, func() {
		sub.Close()
		nc.Close()
		sys.Close()
	}
}
