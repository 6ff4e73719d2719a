package source

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher/internal/loop"
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

const secretText = "s3cr3t-AppSecret/+="

func TestFetchTokenFromFake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     func(secret string, up *upstream.Client) loop.Source
		current func(*fakewechat.Server) string
	}{
		{"token", func(secret string, up *upstream.Client) loop.Source {
			return NewToken("wx1", upstream.NewSecret(secret), up)
		},
			func(f *fakewechat.Server) string { return f.Current("wx1") }},
		{"stable_token", func(secret string, up *upstream.Client) loop.Source {
			return NewStable("wx1", upstream.NewSecret(secret), up)
		},
			func(f *fakewechat.Server) string { return f.Stable("wx1") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := fakewechat.New(fakewechat.Config{})
			fake.AddApp("wx1", secretText)
			srv := httptest.NewServer(fake)
			defer srv.Close()
			up, err := upstream.New(srv.URL, nil, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			src := tc.src(secretText, up)
			if src.API() != tc.name {
				t.Errorf("API %q, want %q", src.API(), tc.name)
			}
			fetched, err := src.Fetch(ctx, &loop.Attempt{Key: "wx1"})
			if err != nil {
				t.Fatal(err)
			}
			if fetched.Value != tc.current(fake) || fetched.ExpiresIn != 7200*time.Second {
				t.Errorf("fetched %+v", fetched)
			}
			valid, err := src.(loop.Checker).Check(ctx, fetched.Value)
			if err != nil || !valid {
				t.Errorf("check of the new token: %v %v", valid, err)
			}
			_, err = tc.src("wrong", up).Fetch(ctx, &loop.Attempt{Key: "wx1"})
			var ue *upstream.Error
			if !errors.As(err, &ue) || ue.ErrCode != 40125 || ue.Class != upstream.ClassConfig {
				t.Errorf("wrong secret: %v", err)
			}
		})
	}
}

func TestStableForceReplacesTheToken(t *testing.T) {
	fake := fakewechat.New(fakewechat.Config{})
	fake.AddApp("wx1", secretText)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	up, _ := upstream.New(srv.URL, nil, time.Second)
	ctx := context.Background()
	s := NewStable("wx1", upstream.NewSecret(secretText), up)
	first, err := s.call(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.call(ctx, false)
	if err != nil || again.Value != first.Value {
		t.Fatalf("normal mode twice: %v, same token %v", err, again.Value == first.Value)
	}
	forced, err := s.call(ctx, true)
	if err != nil || forced.Value == first.Value || fake.Forced("wx1") != 1 {
		t.Fatalf("forced: %v, new token %v, forced %d", err, forced.Value != first.Value, fake.Forced("wx1"))
	}
}

// TestUpstreamErrorsHoldNoSecret drives the client into each kind of
// transport failure; Go's *url.Error would print the URL, secret included.
func TestUpstreamErrorsHoldNoSecret(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices a client gone only once the body is read.
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	defer hang.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://elsewhere.invalid/?stolen="+r.URL.Query().Get("secret"), http.StatusFound)
	}))
	defer redirect.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()

	for name, base := range map[string]string{"timeout": hang.URL, "refused": closed, "redirect": redirect.URL} {
		up, err := upstream.New(base, nil, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, src := range []loop.Source{NewToken("wx1", upstream.NewSecret(secretText), up), NewStable("wx1", upstream.NewSecret(secretText), up)} {
			t.Run(name+"/"+src.API(), func(t *testing.T) {
				_, err := src.Fetch(context.Background(), &loop.Attempt{Key: "wx1"})
				if err == nil {
					t.Fatal("no error")
				}
				for e := err; e != nil; e = errors.Unwrap(e) {
					if strings.Contains(e.Error(), "s3cr3t") {
						t.Errorf("error holds the secret: %s", e)
					}
				}
				t.Log(err)
			})
		}
	}
}
