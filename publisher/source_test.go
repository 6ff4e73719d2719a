package publisher

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
	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

const secretText = "s3cr3t-AppSecret/+="

func TestFetchTokenFromFake(t *testing.T) {
	for _, tc := range []struct {
		src     source
		current func(*fakewechat.Server) string
	}{
		{classicSource{}, func(f *fakewechat.Server) string { return f.Current("wx1") }},
		{stableSource{}, func(f *fakewechat.Server) string { return f.Stable("wx1") }},
	} {
		t.Run(tc.src.api(), func(t *testing.T) {
			fake := fakewechat.New(fakewechat.Config{})
			fake.AddApp("wx1", secretText)
			srv := httptest.NewServer(fake)
			defer srv.Close()
			up, err := upstream.New(srv.URL, nil, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			fetched, err := tc.src.fetch(ctx, up, grant{appid: "wx1", secret: NewSecret(secretText)})
			if err != nil {
				t.Fatal(err)
			}
			if fetched.Value != tc.current(fake) || fetched.ExpiresIn != 7200*time.Second {
				t.Errorf("fetched %+v", fetched)
			}
			valid, err := up.CheckToken(ctx, fetched.Value)
			if err != nil || !valid {
				t.Errorf("check of the new token: %v %v", valid, err)
			}
			_, err = tc.src.fetch(ctx, up, grant{appid: "wx1", secret: NewSecret("wrong")})
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
	first, err := stableSource{}.fetch(ctx, up, grant{appid: "wx1", secret: NewSecret(secretText)})
	if err != nil {
		t.Fatal(err)
	}
	again, err := stableSource{}.fetch(ctx, up, grant{appid: "wx1", secret: NewSecret(secretText)})
	if err != nil || again.Value != first.Value {
		t.Fatalf("normal mode twice: %v, same token %v", err, again.Value == first.Value)
	}
	forced, err := stableSource{}.force(ctx, up, "wx1", NewSecret(secretText))
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
		for _, src := range []source{classicSource{}, stableSource{}} {
			t.Run(name+"/"+src.api(), func(t *testing.T) {
				up, err := upstream.New(base, nil, 200*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				_, err = src.fetch(context.Background(), up, grant{appid: "wx1", secret: NewSecret(secretText)})
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
