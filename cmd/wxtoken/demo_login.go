package main

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/wxtoken/wxtoken/internal/fakewechat"
)

// demoLoginCodePath is where the demo's fake WeChat hands out a user's login
// code, as wx.login gives one to a phone: a newcomer has no phone logged in
// to the demo app, and exchanges the code at the agent's jscode2session.
// Only the demo's fake has it, on loopback.
const demoLoginCodePath = "/demo/login_code"

// demoUser is the user the demo's login codes are for.
const demoUser = "demo-user"

// handleDemoLoginCode adds GET demoLoginCodePath?appid=APPID to mux: a fresh
// code for demoUser of APPID, as text, valid once within 5 minutes.
func handleDemoLoginCode(mux *http.ServeMux, fake *fakewechat.Server, log *slog.Logger) {
	mux.HandleFunc("GET "+demoLoginCodePath, func(w http.ResponseWriter, r *http.Request) {
		appid := r.URL.Query().Get("appid")
		if appid != demoAppID && appid != demoStableAppID {
			http.Error(w, fmt.Sprintf("appid: one of the demo's apps, %s or %s (?appid=%s)", demoAppID, demoStableAppID, demoAppID), http.StatusNotFound)
			return
		}
		log.Info("demo: the fake WeChat issued a login code, as wx.login does on a phone", "appid", appid, "user", demoUser)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintln(w, fake.LoginCode(appid, demoUser))
	})
}

// demoLoginCommands are the commands a newcomer runs to log the demo user
// in through the agent at agentURL, as the log of serve --demo gives them.
func demoLoginCommands(wechatURL, agentURL string) string {
	return "code=$(curl -s '" + wechatURL + demoLoginCodePath + "?appid=" + demoAppID + "'); " +
		"curl -s '" + agentURL + "/sns/jscode2session?appid=" + demoAppID + "&grant_type=authorization_code&js_code='$code"
}
