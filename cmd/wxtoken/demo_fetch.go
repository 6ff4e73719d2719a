package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// demoQuotaEvery is the demo's --quota-every, unless one is given: a fetch
// by `demo fetch` is seen, said and rotated away within seconds, not within
// the hour of a real deployment.
const demoQuotaEvery = 10 * time.Second

const demoFetchSummary = `Fetch a token of a demo app from the fake WeChat of "wxtoken serve --demo"
with the app's AppSecret, as another system holding it would (a cron job, a
colleague's script, a second token server): wxtoken did not make this call.
For wxdemo0123456789ab it is a /cgi-bin/token fetch, which ends the token
wxtoken holds after the fake's 30 s overlap; for wxdemostable012345 a
forced stable_token refresh, which ends it at once. Within a round or two
of the demo's --quota-every (10 s), the refresher's quota/get counts a call
it did not make: an ERROR line, "wxtoken status --quota" lists it, the
status page shows it in red, and the token is rotated at once. The token
fetched is not printed.`

func demoFetch(args []string, getenv func(string) string, stdout io.Writer) error {
	c := newCommand("demo fetch", "APPID", demoFetchSummary,
		"  wxtoken demo fetch "+demoAppID+"\n  wxtoken status --quota")
	var listen string
	demoWeChatListenFlag(c, &listen)
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) != 1 || (rest[0] != demoAppID && rest[0] != demoStableAppID) {
		return usagef("need one of the demo's apps: %s or %s (see wxtoken demo fetch --help)", demoAppID, demoStableAppID)
	}
	if err := checkDemoListen("demo-wechat-listen", listen); err != nil {
		return err
	}
	appid := rest[0]
	path, req, err := demoFetchRequest(appid, listen)
	if err != nil {
		return err
	}
	resp, err := callDemoWeChat(req, listen)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct {
		Token   string `json:"access_token"`
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&answer); err != nil {
		return fmt.Errorf("the demo's fake WeChat at %s answered %s with no JSON: %w", listen, resp.Status, err)
	}
	if answer.Token == "" {
		return fmt.Errorf("the demo's fake WeChat at %s refused the fetch: errcode %d: %s", listen, answer.ErrCode, answer.ErrMsg)
	}
	fmt.Fprintf(stdout, "%s: fetched a token from the demo's fake WeChat at %s with the AppSecret, as another party would; wxtoken did not make this call.\n"+
		"Within 10 to 20 s serve's log says so at ERROR, and `wxtoken status --quota` lists it; the token wxtoken holds is rotated at once.\n", appid, path)
	return nil
}

// demoFetchRequest is the call another party makes for appid: a classic
// token fetch, or a stable_token app's forced refresh (its normal mode
// returns the token in use and ends nothing).
func demoFetchRequest(appid, listen string) (string, *http.Request, error) {
	base := "http://" + listen
	if appid == demoStableAppID {
		body, _ := json.Marshal(map[string]any{"grant_type": "client_credential", "appid": appid, "secret": demoSecret, "force_refresh": true})
		req, err := http.NewRequest(http.MethodPost, base+"/cgi-bin/stable_token", bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return "/cgi-bin/stable_token (force_refresh)", req, err
	}
	q := url.Values{"grant_type": {"client_credential"}, "appid": {appid}, "secret": {demoSecret}}
	req, err := http.NewRequest(http.MethodGet, base+"/cgi-bin/token?"+q.Encode(), nil)
	return "/cgi-bin/token", req, err
}
