package upstream

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

func TestDecodeTokenResponse(t *testing.T) {
	long := strings.Repeat("A", kv.MaxTokenLength+1)
	tests := []struct {
		name    string
		status  int
		body    string
		errcode int
		class   Class
		inErr   string // the error must say this
	}{
		{"success", 200, `{"access_token":"ACCESS_TOKEN","expires_in":7200}`, 0, "", ""},
		{"success with errcode 0", 200, `{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}`, 0, "", ""},
		{"busy", 200, `{"errcode":-1,"errmsg":"system error"}`, -1, ClassRetry, "WeChat is busy"},
		{"minute limit", 200, `{"errcode":45011,"errmsg":"api minute-quota reach limit"}`, 45011, ClassRetry, "per-minute"},
		{"wrong secret", 200, `{"errcode":40125,"errmsg":"invalid appsecret"}`, 40125, ClassConfig, "AppSecret is invalid"},
		{"40001 on fetch", 200, `{"errcode":40001,"errmsg":"invalid credential"}`, 40001, ClassConfig, "AppSecret is wrong"},
		{"not whitelisted", 200, `{"errcode":40164,"errmsg":"invalid ip"}`, 40164, ClassConfig, "whitelist"},
		{"frozen", 200, `{"errcode":40243,"errmsg":"frozen"}`, 40243, ClassConfig, "frozen"},
		{"ip confirmation", 200, `{"errcode":89503,"errmsg":"..."}`, 89503, ClassConfig, "confirmation"},
		{"quota", 200, `{"errcode":45009,"errmsg":"reach max api daily quota limit"}`, 45009, ClassQuota, "daily quota"},
		{"unknown errcode", 200, `{"errcode":12345,"errmsg":"?"}`, 12345, ClassRetry, "unknown errcode"},
		{"HTML 502", 502, `<html><body>502 Bad Gateway</body></html>`, 0, ClassRetry, "HTML error page"},
		{"empty 503", 503, ``, 0, ClassRetry, "HTTP 503"},
		{"HTML with 200", 200, `<html>maintenance</html>`, 0, ClassRetry, "invalid JSON"},
		{"truncated", 200, `{"access_token":"ACCESS_TOK`, 0, ClassRetry, "JSON"},
		{"oversized", 200, `{"x":"` + strings.Repeat("x", maxBody) + `"}`, 0, ClassRetry, "longer than"},
		{"empty body", 200, ``, 0, ClassRetry, "JSON"},
		{"neither token nor errcode", 200, `{"hello":1}`, 0, ClassRetry, "neither"},
		{"empty token", 200, `{"access_token":"","expires_in":7200}`, 0, ClassRetry, "empty"},
		{"long token", 200, `{"access_token":"` + long + `","expires_in":7200}`, 0, ClassRetry, "more than 2048"},
		{"zero lifetime", 200, `{"access_token":"T","expires_in":0}`, 0, ClassRetry, "expires_in 0"},
		{"negative lifetime", 200, `{"access_token":"T","expires_in":-7200}`, 0, ClassRetry, "expires_in -7200"},
		{"absurd lifetime", 200, `{"access_token":"T","expires_in":99999999999}`, 0, ClassRetry, "outside"},
		{"string lifetime", 200, `{"access_token":"T","expires_in":"7200"}`, 0, ClassRetry, "whole number"},
		{"fractional lifetime", 200, `{"access_token":"T","expires_in":7200.5}`, 0, ClassRetry, "whole number"},
		{"missing lifetime", 200, `{"access_token":"T"}`, 0, ClassRetry, "whole number"},
		{"errcode as string", 200, `{"errcode":"40001"}`, 0, ClassRetry, "JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fetched, err := DecodeToken(tc.status, []byte(tc.body), TokenCodes)
			if tc.class == "" {
				if err != nil {
					t.Fatal(err)
				}
				if fetched.ExpiresIn != 7200*time.Second || fetched.Value == "" {
					t.Errorf("fetched %+v", fetched)
				}
				return
			}
			var ue *Error
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if ue.ErrCode != tc.errcode || ue.Class != tc.class {
				t.Errorf("errcode %d class %s, want %d %s", ue.ErrCode, ue.Class, tc.errcode, tc.class)
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

func FuzzDecodeToken(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"ACCESS_TOKEN","expires_in":7200}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		fetched, err := DecodeToken(status, body, TokenCodes)
		if err != nil {
			var ue *Error
			if !errors.As(err, &ue) || ue.Class == "" {
				t.Fatalf("error %v is not a classified *Error", err)
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
		valid, err := decodeCheck(200, []byte(body))
		if err != nil || valid != want {
			t.Errorf("%s: valid %v err %v, want %v", body, valid, err, want)
		}
	}
	if _, err := decodeCheck(200, []byte(`{"errcode":-1}`)); err == nil {
		t.Error("busy answer to a check is not an error")
	}
}

func TestNewUpstreamRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "api.weixin.qq.com", "ftp://x", "http://", "https://api.weixin.qq.com,", "https://api.weixin.qq.com,ftp://x"} {
		if _, err := New(u, nil, time.Second); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

// TestTicketAndPlatformAnswersAreClassedByTheirAPI: the same errcode means
// what the API that answered says: 45009 is WeChat's daily quota and
// WeCom's frequency limit; a token refused is ClassToken whatever the API.
func TestTicketAndPlatformAnswersAreClassedByTheirAPI(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		class Class
	}{
		{"getticket 40001", decodeTicketErr(`{"errcode":40001,"errmsg":"invalid credential"}`, TicketCodes), ClassToken},
		{"WeCom ticket 40014", decodeTicketErr(`{"errcode":40014,"errmsg":"invalid access_token"}`, WeComCodes), ClassToken},
		{"getticket 45009", decodeTicketErr(`{"errcode":45009,"errmsg":"reach max api daily quota limit"}`, TicketCodes), ClassQuota},
		{"WeCom ticket 45009", decodeTicketErr(`{"errcode":45009,"errmsg":"api freq out of limit"}`, WeComCodes), ClassFrequency},
		{"getticket 48001", decodeTicketErr(`{"errcode":48001,"errmsg":"api unauthorized"}`, TicketCodes), ClassConfig},
		{"WeCom ticket 48001", decodeTicketErr(`{"errcode":48001,"errmsg":"api unauthorized"}`, WeComCodes), ClassRetry},
		{"component 61005", DecodeJSON(200, []byte(`{"errcode":61005,"errmsg":"ticket expired"}`), ComponentCodes, &struct{}{}), ClassTicket},
		{"component 40001", DecodeJSON(200, []byte(`{"errcode":40001,"errmsg":"invalid credential"}`), ComponentCodes, &struct{}{}), ClassConfig},
		{"authorizer 40001", DecodeJSON(200, []byte(`{"errcode":40001,"errmsg":"invalid credential"}`), AuthorizerCodes, &struct{}{}), ClassToken},
		{"authorizer 61023", DecodeJSON(200, []byte(`{"errcode":61023,"errmsg":"refresh_token is invalid"}`), AuthorizerCodes, &struct{}{}), ClassConfig},
	} {
		var e *Error
		if !errors.As(tc.err, &e) || e.Class != tc.class {
			t.Errorf("%s: %v, want class %s", tc.name, tc.err, tc.class)
		}
	}
	ticket, err := DecodeTicket(200, []byte(`{"errcode":0,"errmsg":"ok","ticket":"T","expires_in":7200}`), TicketCodes)
	if err != nil || ticket.Value != "T" || ticket.ExpiresIn != 7200*time.Second {
		t.Errorf("a ticket: %+v, %v", ticket, err)
	}
}

func decodeTicketErr(body string, codes Codes) error {
	_, err := DecodeTicket(200, []byte(body), codes)
	return err
}
