package fakewechat

import (
	"net/http"
	"testing"
)

// platformFake is quotaFake with a platform, its component token, and
// authorizerApp authorized.
func platformFake(t *testing.T, cfg Config) (s *Server, base, component string) {
	t.Helper()
	s, c, base := quotaFake(t, cfg)
	if err := s.AddPlatform(platformApp, "component-secret", platformToken, platformKey); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GrantRefreshToken(platformApp, authorizerApp); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	component = s.issue(platformApp, s.app(platformApp), c.Now()).value
	s.mu.Unlock()
	return s, base, component
}

// componentClear is component/clear_quota's errcode for componentAppID,
// asked with token.
func componentClear(t *testing.T, base, token, componentAppID string) int {
	t.Helper()
	return code(wx(t, http.DefaultClient, http.MethodPost, base+PathComponentClearQuota+"?component_access_token="+token,
		map[string]string{"component_appid": componentAppID}))
}

// componentClearV2 is component/clear_quota/v2's errcode, with the
// platform's secret and appid ("" for the platform's own).
func componentClearV2(t *testing.T, c *http.Client, base, secret, appid string) int {
	t.Helper()
	body := map[string]string{"component_appid": platformApp, "appsecret": secret}
	if appid != "" {
		body["appid"] = appid
	}
	return code(wx(t, c, http.MethodPost, base+PathComponentClearQuotaV2, body))
}

func TestAPlatformClearsItsOwnQuotaFromItsTenAndAnAuthorizersFromTheAuthorizers(t *testing.T) {
	s, base, component := platformFake(t, Config{ClearAccountLimit: 3})
	quotaGet(t, base, component, PathAuthorizerTok)
	if got := s.QuotaUsed(platformApp, PathQuotaGet); got != 1 {
		t.Fatalf("quota/get with the component token counted %d against the platform, want 1", got)
	}
	token, _ := fetch(t, http.DefaultClient, base)
	for _, tc := range []struct {
		name, token, appid string
		want               int
	}{
		{"an account's token", token, platformApp, 40001},
		{"no component_appid", component, "", 41002},
		{"an unknown platform", component, "wx00000000000000zz", 61011},
	} {
		if got := componentClear(t, base, tc.token, tc.appid); got != tc.want {
			t.Errorf("component/clear_quota with %s: errcode %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := componentClear(t, base, component, platformApp); got != 0 {
		t.Fatalf("component/clear_quota: errcode %d", got)
	}
	if used, clears := s.QuotaUsed(platformApp, PathQuotaGet), s.ClearsThisMonth(platformApp, ClearAccount); used != 0 || clears != 1 {
		t.Errorf("after component/clear_quota: quota/get used %d, clears %d; want 0 and 1", used, clears)
	}

	for _, tc := range []struct {
		name, secret, appid string
		want                int
	}{
		{"no secret", "", "", 41004},
		{"a wrong secret", "not-the-secret", "", 40125},
		{"an account that did not authorize the platform", "component-secret", quotaApp, 40013},
	} {
		if got := componentClearV2(t, http.DefaultClient, base, tc.secret, tc.appid); got != tc.want {
			t.Errorf("component/clear_quota/v2 with %s: errcode %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := componentClearV2(t, http.DefaultClient, base, "component-secret", authorizerApp); got != 0 {
		t.Errorf("v2 for the authorizer: errcode %d", got)
	}
	if mine, theirs := s.ClearsThisMonth(platformApp, ClearAccount), s.ClearsThisMonth(authorizerApp, ClearAccount); mine != 1 || theirs != 1 {
		t.Errorf("v2 for the authorizer spent the platform's %d, the authorizer's %d; want 1 (before) and 1", mine, theirs)
	}
	for i, want := range []int{0, 0, 48006} {
		if got := componentClearV2(t, http.DefaultClient, base, "component-secret", ""); got != want {
			t.Errorf("v2 for the platform, clear %d of a budget of 3: errcode %d, want %d", i+2, got, want)
		}
	}
	if got := componentClear(t, base, component, platformApp); got != 48006 {
		t.Errorf("component/clear_quota with the budget spent by v2: errcode %d, want 48006", got)
	}
}

func TestAPlatformResetsOneComponentPathWithItsToken(t *testing.T) {
	s, base, component := platformFake(t, Config{})
	quotaGet(t, base, component, PathComponentToken)
	s.mu.Lock()
	s.take(platformApp, PathAuthorizerTok, s.cfg.Now())
	s.mu.Unlock()
	if got := quotaClear(t, base, component, PathAuthorizerTok); got != 0 {
		t.Fatalf("quota/clear of api_authorizer_token with the component token: errcode %d", got)
	}
	if path, other := s.QuotaUsed(platformApp, PathAuthorizerTok), s.QuotaUsed(platformApp, PathQuotaGet); path != 0 || other != 1 {
		t.Errorf("after the clear: api_authorizer_token used %d, quota/get %d; want 0 and 1 (untouched)", path, other)
	}
	if got := s.ClearsThisMonth(platformApp, ClearAPI); got != 1 {
		t.Errorf("%d single-path clears spent, want 1", got)
	}
}

func TestAnUnverifiedPlatformCannotClear(t *testing.T) {
	s, base, component := platformFake(t, Config{})
	s.SetVerified(platformApp, false)
	if got := componentClear(t, base, component, platformApp); got != 48001 {
		t.Errorf("component/clear_quota of an unverified platform: errcode %d, want 48001", got)
	}
	if got := componentClearV2(t, http.DefaultClient, base, "component-secret", ""); got != 48001 {
		t.Errorf("v2 of an unverified platform: errcode %d, want 48001", got)
	}
	if got := componentClearV2(t, http.DefaultClient, base, "component-secret", authorizerApp); got != 0 {
		t.Errorf("v2 for a verified authorizer of an unverified platform: errcode %d, want 0", got)
	}
}

func TestComponentClearQuotaV2IsGuardedByThePlatformsWhitelist(t *testing.T) {
	s, base, _ := platformFake(t, Config{})
	s.SetWhitelist(platformApp, Whitelist{Allowed: []string{"127.0.0.1"}})
	if got := componentClearV2(t, clientFrom("127.0.0.3"), base, "component-secret", ""); got != 40164 {
		t.Errorf("v2 from 127.0.0.3: errcode %d, want 40164", got)
	}
	if got := componentClearV2(t, clientFrom("127.0.0.1"), base, "component-secret", ""); got != 0 {
		t.Errorf("v2 from the listed address: errcode %d", got)
	}
}
