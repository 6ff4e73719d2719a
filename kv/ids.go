package kv

import (
	"errors"
	"fmt"
	"strings"
)

// The names keys are made of. A key is an appid (an official account's or
// mini program's, a platform's, an authorizer's), a WeCom app's
// "<corpid>-<agent>", or either with ".<kind>" after it. Everyone who
// names a key (the apps file, the platform's callback, the tools) checks
// its parts here.

// appIDMaxLength bounds an appid. WeChat appids are 18 characters; corp and
// component ids are of the same order.
const appIDMaxLength = 64

// ValidateAppID checks that appid can be a KV key and a single NATS subject
// token: 1 to 64 characters from [A-Za-z0-9_-]. Dots are excluded because
// keys "<appid>.<kind>" are reserved for other credentials of the same app.
func ValidateAppID(appid string) error {
	if appid == "" {
		return errors.New("appid is empty")
	}
	if len(appid) > appIDMaxLength {
		return fmt.Errorf("appid has %d characters, more than %d", len(appid), appIDMaxLength)
	}
	if i := strings.IndexFunc(appid, func(c rune) bool { return !isAppIDChar(c) }); i >= 0 {
		return fmt.Errorf("appid %q: character %q at %d is not one of A-Z a-z 0-9 _ -", appid, appid[i], i)
	}
	return nil
}

// ValidateID checks a name a key is made of: an appid, or a WeCom corpid or
// agent. It is ValidateAppID without the "-", which joins a WeCom key's
// corpid and agent and is in no appid WeChat issues: a key with one names
// a WeCom app.
func ValidateID(id string) error {
	if err := ValidateAppID(id); err != nil {
		return err
	}
	if strings.Contains(id, "-") {
		return fmt.Errorf(`appid %q has a "-", which WeChat's appids never have: a key with one names a WeCom app (corpid and agent)`, id)
	}
	return nil
}

// weChatAppIDLength is the length of every appid WeChat issues: "wx" and 16
// more characters.
const weChatAppIDLength = 18

// ValidateWeChatAppID checks an appid as WeChat issues them to official
// accounts, mini programs and third-party platforms: "wx" and 16 lowercase
// letters or digits. ValidateAppID is the rule for a key, which WeCom's
// "<corpid>-<agent>" keys pass too; this is the rule for an appid an
// operator types, so that a mistyped one is refused when it is read, not
// answered 40013 (invalid appid) by WeChat at the first fetch.
func ValidateWeChatAppID(appid string) error {
	var wrong string
	switch bad := strings.IndexFunc(appid, func(c rune) bool { return !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') }); {
	case len(appid) != weChatAppIDLength:
		wrong = fmt.Sprintf("has %d characters", len(appid))
	case !strings.HasPrefix(appid, "wx"):
		wrong = `does not start with "wx"`
	case bad >= 0:
		wrong = fmt.Sprintf("has %q at %d", appid[bad], bad)
	default:
		return nil
	}
	return fmt.Errorf(`appid %.64q %s: a WeChat appid is 18 characters, "wx" and 16 lowercase letters or digits, `+
		"such as wx1234567890abcdef (copy it from the account's 基本配置 or 开发设置 page)", appid, wrong)
}

// ValidateBucketName checks a token bucket's name as JetStream does: 1 or
// more characters from [A-Za-z0-9_-].
func ValidateBucketName(name string) error {
	if name == "" {
		return errors.New("bucket name is empty")
	}
	if i := strings.IndexFunc(name, func(c rune) bool { return !isAppIDChar(c) }); i >= 0 {
		return fmt.Errorf("bucket name %q: character %q at %d is not one of A-Z a-z 0-9 _ -", name, name[i], i)
	}
	return nil
}

func isAppIDChar(c rune) bool {
	return c == '_' || c == '-' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}
