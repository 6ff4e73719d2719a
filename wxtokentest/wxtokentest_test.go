package wxtokentest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/subscriber"
	"github.com/wxtoken/wxtoken/wxtokentest"
)

const app = "wx1234567890abcdef"

// TestSystem: a subscriber gets WeChat's token, Rotate replaces it,
// Reject makes WeChat refuse it, FailFetches makes WeChat refuse fetches,
// and Fetches counts them.
func TestSystem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys := wxtokentest.Start(t, app)
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := subscriber.New(ctx, nc, app)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	first := sub.Token()
	if first.Value != sys.Token(app) || !sys.Valid(first.Value) || sys.Fetches(app) != 1 {
		t.Fatalf("first token %+v: WeChat's is %q, %d fetches", first, sys.Token(app), sys.Fetches(app))
	}

	rev, err := sys.Rotate(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if rev <= first.Revision || sys.Valid(first.Value) || sys.Fetches(app) != 2 {
		t.Errorf("Rotate: revision %d after %d, old token valid %v, %d fetches", rev, first.Revision, sys.Valid(first.Value), sys.Fetches(app))
	}

	held, err := sub.Refresh(ctx, first.Revision) // the rotated token, in memory
	if err != nil || held.Revision != rev || !sys.Valid(held.Value) {
		t.Fatalf("after Rotate the subscriber holds %+v (%v)", held, err)
	}
	sys.Reject(app)
	if sys.Valid(held.Value) {
		t.Error("WeChat still accepts the token after Reject")
	}

	sys.FailFetches(app, 45009)
	if _, err := sys.Rotate(ctx, app); err == nil {
		t.Error("Rotate succeeded while WeChat refused fetches")
	}
	sys.Heal(app)
	if got := sys.Fetches(app); got != 3 {
		t.Errorf("%d fetches, want 3", got)
	}
}

// A service's test: the service under test reads its token from wxtoken,
// and the test makes WeChat reject it.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys, err := wxtokentest.New(ctx, app) // wxtokentest.Start(t, app) in a test function
	if err != nil {
		panic(err)
	}
	defer sys.Close()

	nc, err := nats.Connect(sys.URL()) // what the service would connect to
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	sub, err := subscriber.New(ctx, nc, app)
	if err != nil {
		panic(err)
	}
	defer sub.Close()

	before := sub.Token()
	sys.Reject(app) // WeChat answers 40001 to it now
	fmt.Println("WeChat accepts the token:", sys.Valid(before.Value))
	after, err := sub.Refresh(ctx, before.Revision) // what the service does on 40001
	if err != nil {
		panic(err)
	}
	fmt.Println("after a refresh:", sys.Valid(after.Value), "with", sys.Fetches(app), "fetches in all")
	// Output:
	// WeChat accepts the token: false
	// after a refresh: true with 2 fetches in all
}

// TestSystemAddsAndWithdrawsApps: a Set that follows every key holds an
// app added later, with its tickets, and says an app withdrawn removed.
func TestSystemAddsAndWithdrawsApps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sys := wxtokentest.Start(t, app)
	nc, err := nats.Connect(sys.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	set, err := subscriber.NewSet(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	const added = "wxfedcba0987654321"
	if err := sys.AddApps(ctx, added); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{added, added + ".jsapi_ticket", added + ".wx_card_ticket"} {
		for set.Token(key).Revision == 0 {
			select {
			case <-set.Updated():
			case <-ctx.Done():
				t.Fatalf("the set never held %s", key)
			}
		}
	}
	if tok, err := set.Current(added); err != nil || tok.Value != sys.Token(added) {
		t.Errorf("Current(%s) = %+v, %v; want WeChat's token", added, tok, err)
	}
	if err := sys.AddApps(ctx, added); err == nil {
		t.Error("AddApps of an app kept already: no error")
	}

	if err := sys.Withdraw(ctx, app); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{app, app + ".jsapi_ticket", app + ".wx_card_ticket"} {
		for _, err := set.Current(key); !errors.Is(err, subscriber.ErrRemoved); _, err = set.Current(key) {
			select {
			case <-set.Updated():
			case <-ctx.Done():
				t.Fatalf("%s never said removed: %v", key, err)
			}
		}
	}
	if _, err := set.Current(added); err != nil {
		t.Errorf("the app still kept: %v", err)
	}
}
