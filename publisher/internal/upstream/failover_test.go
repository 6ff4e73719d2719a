package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// base is one of WeChat's API bases in a test: it counts the calls it gets
// and answers them with answer.
type base struct {
	srv    *httptest.Server
	calls  atomic.Int32
	mu     sync.Mutex
	answer func(w http.ResponseWriter, r *http.Request)
}

func newBase(t *testing.T) *base {
	b := &base{answer: ok}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		b.mu.Lock()
		answer := b.answer
		b.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *base) set(answer func(w http.ResponseWriter, r *http.Request)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.answer = answer
}

func ok(w http.ResponseWriter, _ *http.Request) {
	w.Write([]byte(`{"ip_list":["127.0.0.1"]}`))
}

func status(code int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func errcode(body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(body)) }
}

// hang answers when the client has given up.
func hang(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const recheck = 10 * time.Minute

// twoBases returns a client of the bases first and second, on a clock the
// test moves.
func twoBases(t *testing.T, first, second string) (*Client, *testClock) {
	t.Helper()
	clock := &testClock{now: time.Now()}
	c, err := New(first+","+second, nil, 200*time.Millisecond, WithFailover("WeChat", recheck, nil), withClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	return c, clock
}

// call makes one call.
func call(t *testing.T, c *Client) {
	t.Helper()
	c.Get(context.Background(), "cgi-bin/getcallbackip", url.Values{"access_token": {"tok"}}, "tok")
}

// TestOneFailureStaysOnTheBaseTwoInARowMoveToTheNext, for each way a base
// fails: the first failure is retried (by the loop) on the same base, the
// second in a row sends the next call to the second base.
func TestOneFailureStaysOnTheBaseTwoInARowMoveToTheNext(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // connection refused from now on
	for _, tc := range []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request)
		refuse bool
	}{
		{name: "HTTP 502", answer: status(http.StatusBadGateway)},
		{name: "HTTP 500 with a page", answer: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(500)
			w.Write([]byte("<html>500</html>"))
		}},
		{name: "errcode -1", answer: errcode(`{"errcode":-1,"errmsg":"system error"}`)},
		{name: "timeout", answer: hang},
		{name: "connection refused", refuse: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, second := newBase(t), newBase(t)
			firstURL := first.srv.URL
			if tc.refuse {
				firstURL = closed.URL
			} else {
				first.set(tc.answer)
			}
			c, _ := twoBases(t, firstURL, second.srv.URL)
			if !tc.refuse { // a refused connection cannot be healed
				call(t, c)
				first.set(ok)
				call(t, c) // one failure: the next call stays, and works
				if second.calls.Load() != 0 {
					t.Fatalf("one failure moved a call to the second base")
				}
				first.set(tc.answer)
			}
			call(t, c)
			call(t, c) // two in a row
			if second.calls.Load() != 0 {
				t.Fatalf("a call went to the second base before two failures in a row")
			}
			call(t, c)
			if second.calls.Load() != 1 {
				t.Fatalf("after two failures in a row the second base has %d calls, want 1", second.calls.Load())
			}
			if !tc.refuse && first.calls.Load() != 4 {
				t.Fatalf("the first base has %d calls, want 4: a failed call was sent again", first.calls.Load())
			}
		})
	}
}

// TestOtherAnswersDoNotMove: a 4xx or an errcode other than -1 is the base
// working; the call itself was wrong, and would be on any base.
func TestOtherAnswersDoNotMove(t *testing.T) {
	for name, answer := range map[string]func(http.ResponseWriter, *http.Request){
		"HTTP 404":      status(http.StatusNotFound),
		"HTTP 429":      status(http.StatusTooManyRequests),
		"errcode 40001": errcode(`{"errcode":40001,"errmsg":"invalid credential"}`),
		"errcode 45009": errcode(`{"errcode":45009,"errmsg":"reach max api daily quota limit"}`),
		"errcode 40164": errcode(`{"errcode":40164,"errmsg":"invalid ip"}`),
		"not JSON":      errcode(`<html>ok?</html>`),
	} {
		t.Run(name, func(t *testing.T) {
			first, second := newBase(t), newBase(t)
			first.set(answer)
			c, _ := twoBases(t, first.srv.URL, second.srv.URL)
			for range 5 {
				call(t, c)
			}
			if first.calls.Load() != 5 || second.calls.Load() != 0 {
				t.Fatalf("calls: first %d, second %d; want 5 and 0", first.calls.Load(), second.calls.Load())
			}
		})
	}
}

// TestCallsStayOnTheSecondBaseAndGoBackAfterTheRecheck: calls stay on the
// second base while it works; a recheck later one call tries the first: a
// failed try leaves calls where they are, a good one brings them back.
func TestCallsStayOnTheSecondBaseAndGoBackAfterTheRecheck(t *testing.T) {
	first, second := newBase(t), newBase(t)
	first.set(status(http.StatusServiceUnavailable))
	c, clock := twoBases(t, first.srv.URL, second.srv.URL)
	call(t, c)
	call(t, c)
	clock.add(recheck - time.Second)
	for range 5 {
		call(t, c)
	}
	if first.calls.Load() != 2 || second.calls.Load() != 5 {
		t.Fatalf("calls: first %d, second %d; want 2 and 5", first.calls.Load(), second.calls.Load())
	}
	clock.add(time.Second)
	call(t, c) // tries the first, which still fails
	call(t, c)
	if first.calls.Load() != 3 || second.calls.Load() != 6 {
		t.Fatalf("after a failed try, calls: first %d, second %d; want 3 and 6", first.calls.Load(), second.calls.Load())
	}
	first.set(ok)
	clock.add(recheck)
	call(t, c) // tries the first, which works
	call(t, c)
	call(t, c)
	if first.calls.Load() != 6 || second.calls.Load() != 6 {
		t.Fatalf("after a good try, calls: first %d, second %d; want 6 and 6", first.calls.Load(), second.calls.Load())
	}
	if h := c.Bases().Health(); !h[0].Current || !h[0].Up || h[0].Failures != 3 {
		t.Fatalf("health %+v", h)
	}
}

// TestACallItsCallerGaveUpSaysNothingOfTheBase: a refresher shutting down
// or losing its lease ends its calls; that is no failure of WeChat's.
func TestACallItsCallerGaveUpSaysNothingOfTheBase(t *testing.T) {
	first, second := newBase(t), newBase(t)
	arrived := make(chan struct{})
	first.set(func(_ http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	c, _ := twoBases(t, first.srv.URL, second.srv.URL)
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-arrived
			cancel()
		}()
		c.Get(ctx, "cgi-bin/getcallbackip", nil, "")
	}
	first.calls.Store(0)
	first.set(ok)
	call(t, c)
	if second.calls.Load() != 0 || first.calls.Load() != 1 {
		t.Fatalf("calls: first %d, second %d after three abandoned calls; want 1 and 0", first.calls.Load(), second.calls.Load())
	}
}
