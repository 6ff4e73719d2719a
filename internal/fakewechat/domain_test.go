package fakewechat

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

func fetchToken(t *testing.T, base string) (int, map[string]any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var answer map[string]any
	json.Unmarshal(body, &answer)
	return resp.StatusCode, answer, nil
}

// TestTwoDomainsShareWeChatsState: a token fetched through one domain works
// through the other, and replaces the one fetched through the first, as
// at WeChat.
func TestTwoDomainsShareWeChatsState(t *testing.T) {
	s := New(Config{})
	s.AddApp("wx1", "s1")
	first, err := s.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := s.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()

	_, a, err := fetchToken(t, first.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, b, err := fetchToken(t, second.URL)
	if err != nil {
		t.Fatal(err)
	}
	if issued, current := s.IssuedAndCurrent("wx1"); issued != 2 || current != b["access_token"] {
		t.Fatalf("issued %d, current %q; want 2 and the second domain's token", issued, current)
	}
	resp, err := http.Get(first.URL + "/cgi-bin/getcallbackip?access_token=" + b["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "ip_list") {
		t.Fatalf("the second domain's token through the first: %s", body)
	}
	if ok, _ := s.Valid(a["access_token"].(string)); !ok {
		t.Fatal("the first token stopped working at once; it overlaps the new one")
	}
	if first.Answered() != 2 || second.Answered() != 1 {
		t.Fatalf("answered: first %d, second %d; want 2 and 1", first.Answered(), second.Answered())
	}
}

// TestADomainFailsAsTold: each outage, then healed; the other domain works
// throughout, and a failed call issues no token.
func TestADomainFailsAsTold(t *testing.T) {
	s := New(Config{})
	s.AddApp("wx1", "s1")
	first, err := s.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := s.ServeDomain("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	for _, tc := range []struct {
		outage Outage
		check  func(status int, answer map[string]any, err error) bool
	}{
		{Refused, func(_ int, _ map[string]any, err error) bool {
			return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
		}},
		{ServerError, func(status int, _ map[string]any, err error) bool {
			return err == nil && status == http.StatusBadGateway
		}},
		{Busy, func(status int, a map[string]any, err error) bool {
			return err == nil && status == 200 && a["errcode"] == float64(-1)
		}},
		{Hang, func(_ int, _ map[string]any, err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
	} {
		t.Run(tc.outage.String(), func(t *testing.T) {
			issued, _ := s.IssuedAndCurrent("wx1")
			first.Fail(tc.outage)
			if status, answer, err := fetchToken(t, first.URL); !tc.check(status, answer, err) {
				t.Fatalf("during the outage: %d %v %v", status, answer, err)
			}
			if _, a, err := fetchToken(t, second.URL); err != nil || a["access_token"] == nil {
				t.Fatalf("the other domain during the outage: %v %v", a, err)
			}
			if now, _ := s.IssuedAndCurrent("wx1"); now != issued+1 {
				t.Fatalf("%d tokens issued, want %d: the failed call issued one", now, issued+1)
			}
			if err := first.Heal(); err != nil {
				t.Fatal(err)
			}
			if _, a, err := fetchToken(t, first.URL); err != nil || a["access_token"] == nil {
				t.Fatalf("healed: %v %v", a, err)
			}
		})
	}
}
