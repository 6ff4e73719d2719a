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
	"github.com/wxtoken/wxtoken/kv"
)

func TestDecodeTokenResponse(t *testing.T) {
	long := strings.Repeat("A", kv.MaxTokenLength+1)
	tests := []struct {
		name    string
		status  int
		body    string
		errcode int
		class   errClass
		inErr   string // the error must say this
	}{
		{"success", 200, `{"access_token":"ACCESS_TOKEN","expires_in":7200}`, 0, "", ""},
		{"success with errcode 0", 200, `{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}`, 0, "", ""},
		{"busy", 200, `{"errcode":-1,"errmsg":"system error"}`, -1, classRetry, "WeChat is busy"},
		{"minute limit", 200, `{"errcode":45011,"errmsg":"api minute-quota reach limit"}`, 45011, classRetry, "per-minute"},
		{"wrong secret", 200, `{"errcode":40125,"errmsg":"invalid appsecret"}`, 40125, classConfig, "AppSecret is invalid"},
		{"40001 on fetch", 200, `{"errcode":40001,"errmsg":"invalid credential"}`, 40001, classConfig, "AppSecret is wrong"},
		{"not whitelisted", 200, `{"errcode":40164,"errmsg":"invalid ip"}`, 40164, classConfig, "whitelist"},
		{"frozen", 200, `{"errcode":40243,"errmsg":"frozen"}`, 40243, classConfig, "frozen"},
		{"ip confirmation", 200, `{"errcode":89503,"errmsg":"..."}`, 89503, classConfig, "confirmation"},
		{"quota", 200, `{"errcode":45009,"errmsg":"reach max api daily quota limit"}`, 45009, classQuota, "daily quota"},
		{"unknown errcode", 200, `{"errcode":12345,"errmsg":"?"}`, 12345, classRetry, "unknown errcode"},
		{"HTML 502", 502, `<html><body>502 Bad Gateway</body></html>`, 0, classRetry, "HTML error page"},
		{"empty 503", 503, ``, 0, classRetry, "HTTP 503"},
		{"HTML with 200", 200, `<html>maintenance</html>`, 0, classRetry, "invalid JSON"},
		{"truncated", 200, `{"access_token":"ACCESS_TOK`, 0, classRetry, "JSON"},
		{"oversized", 200, `{"x":"` + strings.Repeat("x", maxUpstreamBody) + `"}`, 0, classRetry, "longer than"},
		{"empty body", 200, ``, 0, classRetry, "JSON"},
		{"neither token nor errcode", 200, `{"hello":1}`, 0, classRetry, "neither"},
		{"empty token", 200, `{"access_token":"","expires_in":7200}`, 0, classRetry, "empty"},
		{"long token", 200, `{"access_token":"` + long + `","expires_in":7200}`, 0, classRetry, "more than 2048"},
		{"zero lifetime", 200, `{"access_token":"T","expires_in":0}`, 0, classRetry, "expires_in 0"},
		{"negative lifetime", 200, `{"access_token":"T","expires_in":-7200}`, 0, classRetry, "expires_in -7200"},
		{"absurd lifetime", 200, `{"access_token":"T","expires_in":99999999999}`, 0, classRetry, "outside"},
		{"string lifetime", 200, `{"access_token":"T","expires_in":"7200"}`, 0, classRetry, "whole number"},
		{"fractional lifetime", 200, `{"access_token":"T","expires_in":7200.5}`, 0, classRetry, "whole number"},
		{"missing lifetime", 200, `{"access_token":"T"}`, 0, classRetry, "whole number"},
		{"errcode as string", 200, `{"errcode":"40001"}`, 0, classRetry, "JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fetched, err := decodeTokenResponse(tc.status, []byte(tc.body))
			if tc.class == "" {
				if err != nil {
					t.Fatal(err)
				}
				if fetched.ExpiresIn != 7200*time.Second || fetched.Value == "" {
					t.Errorf("fetched %+v", fetched)
				}
				return
			}
			var ue *upstreamError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not an *upstreamError", err)
			}
			if ue.ErrCode != tc.errcode || ue.class != tc.class {
				t.Errorf("errcode %d class %s, want %d %s", ue.ErrCode, ue.class, tc.errcode, tc.class)
			}
			if !strings.Contains(err.Error(), tc.inErr) {
				t.Errorf("error %q does not say %q", err, tc.inErr)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error of %d bytes quotes the body: %.100s...", len(err.Error()), err)
			}
		})
	}
}

func FuzzDecodeTokenResponse(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"ACCESS_TOKEN","expires_in":7200}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		fetched, err := decodeTokenResponse(status, body)
		if err != nil {
			var ue *upstreamError
			if !errors.As(err, &ue) || ue.class == "" {
				t.Fatalf("error %v is not a classified *upstreamError", err)
			}
			return
		}
		if kv.ValidateToken(fetched.Value) != nil || fetched.ExpiresIn <= 0 || fetched.ExpiresIn > maxExpiresIn {
			t.Fatalf("accepted an unusable token: %+v", fetched)
		}
		if _, err := kv.EncodeCredential(kv.NewCredential("wx1", fetched.Value, fetched.ExpiresIn, time.Now())); err != nil {
			t.Fatalf("accepted token cannot be stored: %v", err)
		}
	})
}

func TestDecodeCheckResponse(t *testing.T) {
	for body, want := range map[string]bool{
		`{"ip_list":["101.226.103.0/25"]}`:                  true,
		`{"errcode":40001,"errmsg":"invalid credential"}`:   false,
		`{"errcode":40014,"errmsg":"invalid access_token"}`: false,
		`{"errcode":42001,"errmsg":"access_token expired"}`: false,
	} {
		valid, err := decodeCheckResponse(200, []byte(body))
		if err != nil || valid != want {
			t.Errorf("%s: valid %v err %v, want %v", body, valid, err, want)
		}
	}
	if _, err := decodeCheckResponse(200, []byte(`{"errcode":-1}`)); err == nil {
		t.Error("busy answer to a check is not an error")
	}
}

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
			up, err := newUpstreamClient(srv.URL, nil, time.Second)
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
			valid, err := up.checkToken(ctx, fetched.Value)
			if err != nil || !valid {
				t.Errorf("check of the new token: %v %v", valid, err)
			}
			_, err = tc.src.fetch(ctx, up, grant{appid: "wx1", secret: NewSecret("wrong")})
			var ue *upstreamError
			if !errors.As(err, &ue) || ue.ErrCode != 40125 || ue.class != classConfig {
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
	up, _ := newUpstreamClient(srv.URL, nil, time.Second)
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
				up, err := newUpstreamClient(base, nil, 200*time.Millisecond)
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

func TestNewUpstreamRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "api.weixin.qq.com", "ftp://x", "http://"} {
		if _, err := newUpstreamClient(u, nil, time.Second); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}
