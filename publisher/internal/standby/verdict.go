// Package standby is what a replica knows of whether it could lead: the
// verdict of its last probe of each app (can this replica, from its
// address, use the app's secret?), kept per app, with the operator's fix
// for each way it cannot. It calls nobody: the refresher probes, hands
// each answer to a Table, and publishes what the Table holds.
package standby

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/wxtoken/wxtoken/publisher/internal/upstream"
)

// Verdict is what one probe proved: that this replica can use the app's
// secret from where it stands (OK), or why not.
type Verdict struct {
	OK        bool
	ErrCode   int
	Address   string // the address WeChat refused, from its errmsg (40164), or ""
	Problem   string // what the errcode means
	Fix       string // what an operator does about it
	ErrMsg    string // WeChat's errmsg, scrubbed of the secret
	CheckedAt time.Time
}

// Judge turns a probe's answer for appid into a verdict, or reports that
// it proves nothing (decided false): a network error, WeChat busy, a quota
// spent say nothing about this replica's address or the secret, and the
// last verdict stands. Every configuration error (ClassConfig) is a
// verdict: WeChat refused the secret, the appid or the address.
func Judge(appid string, err error, now time.Time) (v Verdict, decided bool) {
	if err == nil {
		return Verdict{OK: true, CheckedAt: now}, true
	}
	var e *upstream.Error
	if !errors.As(err, &e) || e.Class != upstream.ClassConfig {
		return Verdict{}, false
	}
	v = Verdict{ErrCode: e.ErrCode, Problem: e.Meaning(), ErrMsg: e.ErrMsg, CheckedAt: now}
	v.Address = refusedAddress(e.ErrMsg)
	v.Fix = fixOf(appid, e.ErrCode, v.Address)
	return v, true
}

// WeChat's 40164 names the address it refused: "invalid ip 203.0.113.7
// ipv6 ::ffff:203.0.113.7, not in whitelist rid: …" (an IPv6 caller's
// first address is IPv6 itself).
var invalidIP = regexp.MustCompile(`invalid ip ([0-9A-Fa-f.:]+)`)

// refusedAddress returns the address an errmsg names as not whitelisted,
// or "".
func refusedAddress(errmsg string) string {
	if m := invalidIP.FindStringSubmatch(errmsg); m != nil {
		return m[1]
	}
	return ""
}

// fixOf is what an operator does about errcode for appid, in words a log
// line can carry.
func fixOf(appid string, errcode int, addr string) string {
	where := "this host's outgoing address (the errmsg names it; serve --wechat-source-addr chooses it on a host with several)"
	if addr != "" {
		where = addr
	}
	switch errcode {
	case 40164, 61004, 60020:
		return fmt.Sprintf("add %s to the IP whitelist of %s (WeChat's console: Development, Basic configuration, IP whitelist; WeCom's: the app's trusted IPs)", where, appid)
	case 89501, 89503, 89506:
		return fmt.Sprintf("an administrator of %s must confirm calls from %s: WeChat asked for it in the administrator's WeChat", appid, where)
	case 89507:
		return fmt.Sprintf("an administrator of %s refused calls from %s for an hour: confirm the address, or wait", appid, where)
	case 40001, 40125: // 40001 on a probe, which sends no token: the secret
		return fmt.Sprintf("the AppSecret of %s is wrong or was reset: %s", appid, secretFix(40125, appid))
	case 40243:
		return fmt.Sprintf("the AppSecret of %s is frozen: %s", appid, secretFix(40243, appid))
	case 40013, 61011:
		return fmt.Sprintf("WeChat does not know the appid %s: check it in the apps file", appid)
	}
	return fmt.Sprintf("see what errcode %d means for %s", errcode, appid)
}

// secretFix is the fix for a secret WeChat refused with errcode in the
// words of a refused fetch's ERROR (upstream.SecretFix: the console, then
// `wxtoken secret set`), and the apps file as the other way in.
func secretFix(errcode int, appid string) string {
	return upstream.SecretFix(&upstream.Error{ErrCode: errcode}, appid) + " (or put it in the apps file and reload with SIGHUP)"
}
