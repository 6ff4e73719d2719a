package agent

import (
	"bytes"
	"encoding/json"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wxtoken/wxtoken/kv"
)

// Finding the services that still hold a secret. The agent needs none and
// forwards none, so a secret that reaches it is one a service still keeps
// in its configuration: every request is looked at, wherever it goes, and
// one that carried a secret is counted and warned about, naming the client,
// never the value. What happens to the request depends on its path:
//
//   - the token and ticket paths are answered from memory, and the secret
//     goes nowhere: an SDK pointed at the agent sends appid and secret
//     there, and refusing would break it; counting finds it;
//   - the login paths refuse it (login.go): the caller is told to send
//     none, and the refresher puts the app's in;
//   - every path forwarded to WeChat refuses it, rather than strip it:
//     the calls that take a secret take no token (clear_quota/v2, a
//     platform's component token), so a stripped one would reach WeChat as
//     another call than the one asked, answered 41004; and a stray one on a
//     call that needs none is still a copy of the secret to find.

// secretNames are the names a secret goes by in WeChat's APIs: an app's,
// a WeCom app's and a platform's.
var secretNames = []string{"secret", "appsecret", "corpsecret", "component_appsecret"}

// carriedParam names the first of names that q carries with a value that
// is not empty, in any of its values: secret=&secret=x carries one. An
// empty one is none: an SDK configured with an empty secret sends it so.
func carriedParam(q url.Values, names []string) string {
	for _, name := range names {
		for _, v := range q[name] {
			if v != "" {
				return name
			}
		}
	}
	return ""
}

// querySecret names the secret parameter a raw query carries, if any. A
// query that has neither "secret" nor an escape cannot name one, and is
// not parsed: most requests are the own API's reads, which parse no query.
// A query that does not parse carries none the agent could read; it is
// refused where it is read.
func querySecret(rawQuery string) string {
	if !strings.Contains(rawQuery, "secret") && !strings.Contains(rawQuery, "%") {
		return ""
	}
	q, _ := url.ParseQuery(rawQuery)
	return carriedParam(q, secretNames)
}

// bodySecret names the secret field of a body the agent has read: a field
// of a JSON object's (each time it appears: a name given twice counts if
// either is not empty), or a form's. Other bodies (an upload's) carry none
// the agent reads. A body with neither "secret" nor an escape (JSON's \u,
// a form's %) cannot name one, and is not decoded.
func bodySecret(contentType string, body []byte) string {
	if !bytes.Contains(body, []byte("secret")) && !bytes.Contains(body, []byte(`\u`)) && !bytes.Contains(body, []byte("%")) {
		return ""
	}
	if media, _, _ := mime.ParseMediaType(contentType); media == "application/x-www-form-urlencoded" {
		q, _ := url.ParseQuery(string(body))
		return carriedParam(q, secretNames)
	}
	return jsonSecret(body)
}

// jsonSecret names the first field of secretNames that the JSON object
// body has with a value other than "" or null.
func jsonSecret(body []byte) string {
	d := json.NewDecoder(bytes.NewReader(body))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return ""
		}
		name, _ := t.(string)
		var value json.RawMessage
		if d.Decode(&value) != nil {
			return ""
		}
		if v := string(bytes.TrimSpace(value)); isSecretName(name) && v != `""` && v != "null" {
			return name
		}
	}
	return ""
}

func isSecretName(name string) bool {
	for _, n := range secretNames {
		if n == name {
			return true
		}
	}
	return false
}

// secretLabel is a request's path as wxtoken_agent_requests_with_secret_total
// labels it: the paths the agent answers itself by name, /v1/ for its own
// API, and "proxy" for every path forwarded to WeChat, which may be any.
func secretLabel(path string) string {
	switch path {
	case "/cgi-bin/token", "/cgi-bin/stable_token", "/cgi-bin/gettoken", "/cgi-bin/ticket/getticket",
		"/cgi-bin/get_jsapi_ticket", "/cgi-bin/ticket/get",
		kv.LoginJSCode2Session, kv.LoginOAuthAccessToken, kv.LoginOAuthRefreshToken,
		kv.LoginComponentJSCode2Session, kv.LoginComponentAccessToken, kv.LoginComponentRefreshToken,
		"/sns/userinfo", "/sns/auth":
		return path
	}
	if strings.HasPrefix(path, "/v1/") {
		return "/v1/"
	}
	return "proxy"
}

// carried notes that the request carried the secret parameter name, in
// where ("query" or "body"); the first noted is the one reported.
func (x *exchange) carried(name, where string) {
	if x.secret == "" && name != "" {
		x.secret, x.secretIn = name, where
	}
}

// refuseSecret answers a request that carried a secret and may not go on
// with it, in WeChat's shape: 400, errcode 40125 (invalid appsecret).
func (x *exchange) refuseSecret(why string) {
	x.wechatError(http.StatusBadRequest, 40125, "secret_sent",
		"invalid appsecret: send no %s (in the %s): %s; remove it from this service's configuration (an SDK's secret setting can be empty)",
		x.secret, x.secretIn, why)
}

// reportSecret counts a request that carried a secret, and warns naming
// the client, the path and the parameter: the service that sent it still
// holds the secret. Every one is counted; the warning comes once a
// secretWarnEvery per client, path and parameter, since an SDK may send
// its secret with every token call.
func (a *Agent) reportSecret(x *exchange) {
	if x.secret == "" {
		return
	}
	label := secretLabel(x.path)
	a.metrics.secrets.WithLabelValues(label).Inc()
	if !a.secretWarnings.due(secretWarning{clientOf(x), label, x.secret}, time.Now()) {
		return
	}
	what := "answered it without the secret, which went nowhere"
	if x.outcome == "secret_sent" {
		what = "refused it"
	}
	a.log.Warn("a request carried a secret, and the agent "+what+": the service that sent it still holds the secret; remove it from its configuration",
		"client", x.caller.name(x.r), "path", truncate(x.path, 100), "parameter", x.secret, "in", x.secretIn,
		"repeats", "once a minute at most for this client, path and parameter; wxtoken_agent_requests_with_secret_total counts every one")
}

// secretWarnEvery is how often a client's secret on one path is warned
// about at most.
const secretWarnEvery = time.Minute

// secretWarning is what a warning of a secret is about.
type secretWarning struct{ client, path, parameter string }

// clientOf is who sent a request, for secretWarnings: the client's name,
// or its address without the port when the agent has no clients.
func clientOf(x *exchange) string {
	if x.caller.client != nil {
		return x.caller.client.Name
	}
	host, _, err := net.SplitHostPort(x.r.RemoteAddr)
	if err != nil {
		return x.r.RemoteAddr
	}
	return host
}

// secretWarnings remembers when each warning of a secret was last given.
// The zero value is ready.
type secretWarnings struct {
	mu   sync.Mutex
	last map[secretWarning]time.Time
}

// maxSecretWarnings bounds secretWarnings: without an auth file, clients
// are addresses, as many as there are hosts.
const maxSecretWarnings = 1024

// due reports whether w is to be warned about at now, and if so notes it.
func (s *secretWarnings) due(w secretWarning, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.last[w]; ok && now.Sub(last) < secretWarnEvery {
		return false
	}
	if s.last == nil || len(s.last) >= maxSecretWarnings {
		s.last = map[secretWarning]time.Time{} // forgets, at worst, warnings not due for a minute
	}
	s.last[w] = now
	return true
}

// truncate cuts s to at most n bytes: a path in a log line is the
// client's, and may be long.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
