// Package jssdk signs WeChat JS-SDK configurations with a ticket a
// subscriber (or a subscriber.Set) holds in memory: wx.config with the
// app's jsapi_ticket (or a WeCom corp's), WeCom's wx.agentConfig with an
// app's agent_config ticket, and the card (卡券) signature with its wx_card
// ticket. Nothing here does I/O: a page's configuration costs a SHA-1.
package jssdk

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// Signature is WeChat's JS-SDK signature: the SHA-1, in hex, of
// "jsapi_ticket=T&noncestr=N&timestamp=S&url=U", the fields in that (ASCII)
// order and nothing escaped. pageURL is the page's full URL; its #fragment
// is dropped, as WeChat requires. It signs wx.config with a jsapi_ticket
// (and WeCom's wx.agentConfig with an agent_config ticket).
func Signature(ticket, nonceStr string, timestamp int64, pageURL string) string {
	pageURL, _, _ = strings.Cut(pageURL, "#")
	sum := sha1.Sum([]byte("jsapi_ticket=" + ticket + "&noncestr=" + nonceStr +
		"&timestamp=" + strconv.FormatInt(timestamp, 10) + "&url=" + pageURL))
	return hex.EncodeToString(sum[:])
}

// CardSignature is the card (卡券) API's signature: the SHA-1, in hex, of
// the values sorted as strings (byte order) and joined with nothing
// between them. The values are the ones the card call names: the wx_card
// ticket, the timestamp, the nonce_str and, as the call needs, card_id,
// code, openid, balance and so on.
func CardSignature(values ...string) string {
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	sum := sha1.Sum([]byte(strings.Join(sorted, "")))
	return hex.EncodeToString(sum[:])
}

// Config is what a page passes to wx.config (with its jsApiList added),
// in the JSON field names the JS-SDK expects.
type Config struct {
	AppID     string `json:"appId"`
	Timestamp int64  `json:"timestamp"`
	NonceStr  string `json:"nonceStr"`
	Signature string `json:"signature"`
}

// Ticket is a ticket held in memory: a *subscriber.Subscriber that follows
// one, or a key of a subscriber.Set (Set.Member).
type Ticket interface {
	// Key is the ticket's key, "<appid>.jsapi_ticket" say.
	Key() string
	// Current is the ticket, or why it cannot be used.
	Current() (subscriber.Token, error)
}

// ErrNotJSAPITicket is returned by Sign for a ticket whose key is not a
// jsapi_ticket's.
var ErrNotJSAPITicket = errors.New("jssdk: the subscriber does not follow a jsapi_ticket")

// Sign returns the wx.config for the page at pageURL, signed with the
// jsapi_ticket held ("<appid>.jsapi_ticket", or a WeCom corp's
// "<corpid>-<agent>.jsapi_ticket", signed for the corp): a Subscriber's, or a Set's
// (set.Member(key)), with the current time and a fresh nonce. It fails if
// the ticket cannot be used (the subscriber or set is closed, the ticket
// expired and was not replaced, or a set holds none), or if pageURL is not
// an absolute http(s) URL.
func Sign(ticket Ticket, pageURL string) (Config, error) {
	key := ticket.Key()
	appid, kind := kv.SplitKey(key)
	if kind != kv.KindJSAPITicket {
		return Config{}, fmt.Errorf("%w: it follows %s", ErrNotJSAPITicket, key)
	}
	if err := checkPageURL(pageURL); err != nil {
		return Config{}, err
	}
	held, err := ticket.Current()
	if err != nil {
		return Config{}, fmt.Errorf("jssdk: %w", err)
	}
	if corpid, _, ok := kv.SplitWeComKey(key); ok {
		appid = corpid // WeCom's wx.config names the corp
	}
	return NewConfig(appid, held.Value, pageURL, time.Now())
}

// AgentConfig is what a WeCom page passes to wx.agentConfig (with its
// jsApiList), in the field names the JS-SDK expects.
type AgentConfig struct {
	CorpID    string `json:"corpid"`
	AgentID   string `json:"agentid"`
	Timestamp int64  `json:"timestamp"`
	NonceStr  string `json:"nonceStr"`
	Signature string `json:"signature"`
}

// ErrNotAgentConfigTicket is returned by SignAgentConfig for a ticket
// whose key is not a WeCom app's agent_config ticket's.
var ErrNotAgentConfigTicket = errors.New("jssdk: the subscriber does not follow an agent_config_ticket")

// SignAgentConfig returns the wx.agentConfig of the WeCom page at pageURL,
// signed (as wx.config is) with the agent_config ticket held
// ("<corpid>-<agentid>.agent_config_ticket": a Subscriber's, or a Set's),
// now and with a fresh nonce.
func SignAgentConfig(ticket Ticket, pageURL string) (AgentConfig, error) {
	key := ticket.Key()
	corpid, agent, wecom := kv.SplitWeComKey(key)
	if _, kind := kv.SplitKey(key); kind != kv.KindAgentConfigTicket || !wecom {
		return AgentConfig{}, fmt.Errorf("%w: it follows %s", ErrNotAgentConfigTicket, key)
	}
	if err := checkPageURL(pageURL); err != nil {
		return AgentConfig{}, err
	}
	held, err := ticket.Current()
	if err != nil {
		return AgentConfig{}, fmt.Errorf("jssdk: %w", err)
	}
	c, err := NewConfig(corpid, held.Value, pageURL, time.Now())
	if err != nil {
		return AgentConfig{}, err
	}
	return AgentConfig{CorpID: corpid, AgentID: agent, Timestamp: c.Timestamp, NonceStr: c.NonceStr, Signature: c.Signature}, nil
}

// NewConfig returns the wx.config of appid for the page at pageURL,
// signed with jsapiTicket at the time now and with a fresh nonce, for a
// program that holds the ticket itself. Sign is the one call for a
// subscriber's.
func NewConfig(appid, jsapiTicket, pageURL string, now time.Time) (Config, error) {
	if err := checkPageURL(pageURL); err != nil {
		return Config{}, err
	}
	c := Config{AppID: appid, Timestamp: now.Unix(), NonceStr: NonceStr()}
	c.Signature = Signature(jsapiTicket, c.NonceStr, c.Timestamp, pageURL)
	return c, nil
}

// checkPageURL refuses what cannot be a page's URL: the signature would
// be computed, and wx.config would fail with "invalid signature".
func checkPageURL(pageURL string) error {
	u, err := url.Parse(pageURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("jssdk: %.200q is not a page's absolute http(s) URL", pageURL)
	}
	return nil
}

const nonceAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NonceStr returns 16 random characters from [A-Za-z0-9], as WeChat's
// examples use.
func NonceStr() string {
	b := make([]byte, 16)
	rand.Read(b)
	for i := range b {
		b[i] = nonceAlphabet[int(b[i])%len(nonceAlphabet)]
	}
	return string(b)
}
