package fakewechat

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

// quotaClear is quota/clear's errcode for path, asked with token.
func quotaClear(t *testing.T, base, token, path string) int {
	t.Helper()
	return code(wx(t, http.DefaultClient, http.MethodPost, base+PathQuotaClear+"?access_token="+token, map[string]string{"cgi_path": path}))
}

// clearQuota is clear_quota's errcode for appid, asked with token.
func clearQuota(t *testing.T, base, token, appid string) int {
	t.Helper()
	return code(wx(t, http.DefaultClient, http.MethodPost, base+PathClearQuota+"?access_token="+token, map[string]string{"appid": appid}))
}

// clearV2 is clear_quota/v2's errcode, with appid and secret in the body,
// or in the query when inQuery.
func clearV2(t *testing.T, c *http.Client, base, appid, secret string, inQuery bool) int {
	t.Helper()
	if inQuery {
		return code(wx(t, c, http.MethodPost, base+PathClearQuotaV2+"?"+url.Values{"appid": {appid}, "appsecret": {secret}}.Encode(), nil))
	}
	return code(wx(t, c, http.MethodPost, base+PathClearQuotaV2, map[string]string{"appid": appid, "appsecret": secret}))
}

func TestQuotaClearResetsOnePathFromItsOwnMonthlyBudget(t *testing.T) {
	s, c, base := quotaFake(t, Config{ClearAPILimit: 2})
	s.SetQuotaLimit(quotaApp, PathToken, 1)
	token, _ := fetch(t, http.DefaultClient, base)
	wx(t, http.DefaultClient, http.MethodGet, base+PathGetTicket+"?type=jsapi&access_token="+token, nil)
	if _, errcode := fetch(t, http.DefaultClient, base); errcode != 45009 {
		t.Fatalf("past the limit: errcode %d, want 45009", errcode)
	}
	if got := quotaClear(t, base, token, PathToken); got != 0 {
		t.Fatalf("quota/clear: errcode %d", got)
	}
	if used, ticket := s.QuotaUsed(quotaApp, PathToken), s.QuotaUsed(quotaApp, PathGetTicket); used != 0 || ticket != 1 {
		t.Errorf("after clearing the token's path: token used %d, getticket %d; want 0 and 1 (untouched)", used, ticket)
	}
	if _, errcode := fetch(t, http.DefaultClient, base); errcode != 0 {
		t.Errorf("a fetch after the clear: errcode %d", errcode)
	}

	s.RefuseClear(PathGetTicket, 76021)
	for _, tc := range []struct {
		path string
		want int
	}{{PathGetTicket, 76021}, {PathJSCode2Session, 76022}, {"cgi-bin/token", 76003}} {
		if got := quotaClear(t, base, token, tc.path); got != tc.want {
			t.Errorf("quota/clear %s: errcode %d, want %d", tc.path, got, tc.want)
		}
	}
	if got := s.ClearsThisMonth(quotaApp, ClearAPI); got != 1 {
		t.Errorf("%d clears spent after refused ones, want 1", got)
	}
	s.RefuseClear(PathGetTicket, 0)
	if got := quotaClear(t, base, token, PathGetTicket); got != 0 {
		t.Errorf("quota/clear of a path taken again: errcode %d", got)
	}
	if got := quotaClear(t, base, token, PathToken); got != 48006 {
		t.Errorf("a third clear with a budget of 2: errcode %d, want 48006", got)
	}
	if got := s.ClearsThisMonth(quotaApp, ClearAccount); got != 0 {
		t.Errorf("quota/clear spent %d of the account's budget, want 0", got)
	}

	c.advance(time.Date(2027, 1, 1, 0, 0, 0, 0, chinaTime).Sub(c.Now())) // 1 January, China time
	token, _ = fetch(t, http.DefaultClient, base)
	if got := quotaClear(t, base, token, PathToken); got != 0 || s.ClearsThisMonth(quotaApp, ClearAPI) != 1 {
		t.Errorf("in the next China month: errcode %d, %d spent; want 0 and 1", got, s.ClearsThisMonth(quotaApp, ClearAPI))
	}
}

func TestTheAccountsTenClearsAreSharedByClearQuotaV2AndTheConsole(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	s.AddApp("wx00000000000000q2", "other-secret")
	token, _ := fetch(t, http.DefaultClient, base)
	wx(t, http.DefaultClient, http.MethodPost, base+PathStableToken, map[string]any{"grant_type": "client_credential", "appid": quotaApp, "secret": quotaSecret})

	if got := clearQuota(t, base, token, "wx00000000000000q2"); got != 40013 {
		t.Errorf("clear_quota of another account: errcode %d, want 40013", got)
	}
	if got := clearQuota(t, base, token, ""); got != 41002 {
		t.Errorf("clear_quota without appid: errcode %d, want 41002", got)
	}
	if got := clearV2(t, http.DefaultClient, base, quotaApp, "wrong", false); got != 40125 {
		t.Errorf("v2 with a wrong secret: errcode %d, want 40125", got)
	}
	if got := clearV2(t, http.DefaultClient, base, "", "", true); got != 41002 {
		t.Errorf("v2 without appid: errcode %d, want 41002", got)
	}

	if got := clearQuota(t, base, token, quotaApp); got != 0 {
		t.Fatalf("clear_quota: errcode %d", got)
	}
	if tok, stable := s.QuotaUsed(quotaApp, PathToken), s.QuotaUsed(quotaApp, PathStableToken); tok != 0 || stable != 0 {
		t.Errorf("after clear_quota: token used %d, stable_token %d; want every path at 0", tok, stable)
	}
	for i := range 8 {
		if err := s.ConsoleClear(quotaApp); err != nil {
			t.Fatalf("console clear %d: %v", i+1, err)
		}
	}
	if got := clearV2(t, http.DefaultClient, base, quotaApp, quotaSecret, false); got != 0 {
		t.Fatalf("v2, the tenth clear: errcode %d", got)
	}
	if got := s.ClearsThisMonth(quotaApp, ClearAccount); got != 10 {
		t.Errorf("ClearsThisMonth = %d, want 10", got)
	}
	if got := clearV2(t, http.DefaultClient, base, quotaApp, quotaSecret, true); got != 48006 {
		t.Errorf("v2 (query) past the budget: errcode %d, want 48006", got)
	}
	if got := clearQuota(t, base, token, quotaApp); got != 48006 {
		t.Errorf("clear_quota past the budget: errcode %d, want 48006", got)
	}
	if err := s.ConsoleClear(quotaApp); err == nil {
		t.Error("the console cleared past the budget")
	}
	if got := s.ClearsThisMonth(quotaApp, ClearAccount); got != 10 {
		t.Errorf("refused clears spent budget: %d, want 10", got)
	}
	if got := quotaClear(t, base, token, PathToken); got != 0 {
		t.Errorf("quota/clear with the account's budget spent: errcode %d, want 0 (its own budget)", got)
	}
}

func TestAnUnverifiedAccountCannotClear(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	token, _ := fetch(t, http.DefaultClient, base)
	s.SetVerified(quotaApp, false)
	for name, got := range map[string]int{
		"quota/clear":    quotaClear(t, base, token, PathToken),
		"clear_quota":    clearQuota(t, base, token, quotaApp),
		"clear_quota/v2": clearV2(t, http.DefaultClient, base, quotaApp, quotaSecret, false),
	} {
		if got != 48001 {
			t.Errorf("%s: errcode %d, want 48001", name, got)
		}
	}
	if err := s.ConsoleClear(quotaApp); err == nil {
		t.Error("the console cleared an unverified account's quota")
	}
	if a, b := s.ClearsThisMonth(quotaApp, ClearAPI), s.ClearsThisMonth(quotaApp, ClearAccount); a+b != 0 {
		t.Errorf("refused clears spent %d and %d, want none", a, b)
	}
	s.SetVerified(quotaApp, true)
	if got := clearQuota(t, base, token, quotaApp); got != 0 {
		t.Errorf("clear_quota once verified: errcode %d", got)
	}
}

func TestClearQuotaV2IsGuardedByTheWhitelist(t *testing.T) {
	s, _, base := quotaFake(t, Config{})
	s.SetWhitelist(quotaApp, Whitelist{Allowed: []string{"127.0.0.1"}})
	for _, inQuery := range []bool{false, true} {
		if got := clearV2(t, clientFrom("127.0.0.3"), base, quotaApp, quotaSecret, inQuery); got != 40164 {
			t.Errorf("v2 from 127.0.0.3 (query %v): errcode %d, want 40164", inQuery, got)
		}
	}
	if got := s.ClearsThisMonth(quotaApp, ClearAccount); got != 0 {
		t.Errorf("refused by the whitelist, yet %d clears spent", got)
	}
	if got := clearV2(t, clientFrom("127.0.0.1"), base, quotaApp, quotaSecret, true); got != 0 {
		t.Errorf("v2 from the listed address: errcode %d", got)
	}
}
