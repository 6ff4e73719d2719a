package loop

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// TestIssuedFromIsTheFirstUnansweredCallWithinTheValuesLife: the calls
// that got no answer since the last that brought a value are remembered;
// an error answer forgets none; a value counts from the first of them
// that went within its lifetime before the call that brought it, and the
// answer forgets them all.
func TestIssuedFromIsTheFirstUnansweredCallWithinTheValuesLife(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	cut := cutShortError(t)
	if !upstream.Unanswered(cut) {
		t.Fatalf("a call cut short (%v) is not unanswered", cut)
	}
	busy := &upstream.Error{ErrCode: -1, Class: upstream.ClassRetry}
	if upstream.Unanswered(busy) {
		t.Fatal("WeChat's -1 answer counts as no answer")
	}

	cr := &credential{}
	cr.heard(t0, cut)                      // 7210 s before the value: dead by then
	cr.heard(t0.Add(20*time.Second), cut)  // the first within its life
	cr.heard(t0.Add(30*time.Second), busy) // answered, with no value: forgets nothing
	cr.heard(t0.Add(40*time.Second), cut)  // later
	at := t0.Add(7210 * time.Second)
	a := &Attempt{unanswered: cr.heard(at, nil)}
	issued := upstream.Issued{Value: "v", ExpiresIn: 7200 * time.Second, At: at}
	if got, want := a.IssuedFrom(issued), t0.Add(20*time.Second); !got.Equal(want) {
		t.Errorf("IssuedFrom = %s, want %s (the first call without an answer within the value's life)", got, want)
	}
	if left := cr.heard(at.Add(time.Second), nil); len(left) != 0 {
		t.Errorf("an answer with a value left %d calls without an answer remembered", len(left))
	}
	if got := (&Attempt{}).IssuedFrom(issued); !got.Equal(at) {
		t.Errorf("with no call unanswered: %s, want the call's own time %s", got, at)
	}
}

// cutShortError is what the upstream client returns for a call whose
// context ended before an answer came, as a timeout's does.
func cutShortError(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	up, err := upstream.New("http://127.0.0.1:1", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = up.Get(ctx, "cgi-bin/ticket/getticket", nil, "")
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("a call cut short: %v", err)
	}
	return err
}
