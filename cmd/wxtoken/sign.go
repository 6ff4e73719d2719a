package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/jssdk"
	"github.com/wxtoken/wxtoken/kv"
)

func sign(args []string, getenv func(string) string, stdout, _ io.Writer) error {
	var n natsFlags
	c := newCommand("sign", "KEY URL", `Print the wx.config of the page at URL as JSON (appId, timestamp, nonceStr,
signature), signed with the app's current jsapi_ticket: what the page passes
to wx.config, with its jsApiList. KEY is the appid or APPID.jsapi_ticket; the
app needs "tickets: [jsapi]" in the refresher's apps file. For WeCom, KEY is
CORPID-AGENT (the corp's ticket, for wx.config) or
CORPID-AGENT.agent_config_ticket (wx.agentConfig: corpid, agentid, ...).
The URL is the page's full URL; a #fragment is dropped before signing, as
WeChat asks.`,
		`  wxtoken sign wx1234567890abcdef 'https://shop.example.com/pay?order=42'
  wxtoken sign ww1234567890abcdef-1000002.agent_config_ticket 'https://oa.example.com/'`)
	n.register(c, "NATS server URLs (default "+nats.DefaultURL+")", withBucket)
	rest, err := parseOrHelp(c, args, getenv, stdout)
	if err != nil {
		return err
	}
	if len(rest) != 2 {
		return usagef("need a KEY and a URL (see wxtoken sign --help)")
	}
	key, pageURL := rest[0], rest[1]
	if err := kv.ValidateKey(key); err != nil {
		return usageError{err.Error()}
	}
	appid, kind := kv.SplitKey(key)
	corpid, agent, wecom := kv.SplitWeComKey(key)
	switch {
	case kind == kv.KindToken:
		key = kv.Key(appid, kv.KindJSAPITicket)
	case kind == kv.KindJSAPITicket:
	case kind == kv.KindAgentConfigTicket && wecom:
	default:
		return usagef("%s is a %s; wx.config is signed with the jsapi_ticket (%s)", key, kind, kv.Key(appid, kv.KindJSAPITicket))
	}
	signedFor := appid
	if wecom {
		signedFor = corpid // WeCom's configurations name the corp
	}
	// The URL is checked before connecting: a wrong one is a usage error.
	if _, err := jssdk.NewConfig(appid, "-", pageURL, time.Now()); err != nil {
		return usageError{err.Error()}
	}
	nc, err := n.connect("wxtoken sign")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	var ticket kv.Credential
	if err := nc.do(ctx, func(ctx context.Context) (err error) {
		ticket, _, err = readCredential(ctx, nc.Conn, n.bucket, key)
		return err
	}); err != nil {
		return err
	}
	now := time.Now()
	if !ticket.ValidAt(now) {
		return fmt.Errorf("the ticket %s expired at %s (is the refresher running?)", key, ticket.ExpiresAt.Format(time.RFC3339))
	}
	config, err := jssdk.NewConfig(signedFor, ticket.Value, pageURL, now)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if kind == kv.KindAgentConfigTicket {
		return enc.Encode(jssdk.AgentConfig{CorpID: corpid, AgentID: agent, Timestamp: config.Timestamp,
			NonceStr: config.NonceStr, Signature: config.Signature})
	}
	return enc.Encode(config)
}
