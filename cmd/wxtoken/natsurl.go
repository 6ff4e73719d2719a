package main

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// natsSchemes are the URL schemes nats.go speaks. A URL of none is
// HOST:PORT, which nats.go takes as nats://HOST:PORT.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// checkNATSURLs refuses at once, in words, the --nats-url that nats.go
// would try for 5 s and then time out on (an http:// address) or fail on
// at the first connection: a URL of another scheme, of no host, of a port
// that is not a number, or websocket URLs mixed with others.
func checkNATSURLs(urls string) error {
	const fix = "write nats://HOST:4222 (or tls://, ws://, wss://), or HOST:PORT"
	websocket := map[bool]bool{}
	for _, raw := range strings.Split(urls, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		full := raw
		if !strings.Contains(raw, "://") {
			full = "nats://" + raw
		}
		scheme, _, _ := strings.Cut(full, "://")
		if !slices.Contains(natsSchemes, strings.ToLower(scheme)) {
			return fmt.Errorf("--nats-url %q: %s:// is not NATS; %s", redactURL(raw), scheme, fix)
		}
		u, err := url.Parse(full)
		switch {
		case err != nil && strings.Contains(err.Error(), "port"):
			return fmt.Errorf("--nats-url %q: the port is not a number; %s", redactURL(raw), fix)
		case err != nil:
			return fmt.Errorf("--nats-url %q is not a URL; %s", redactURL(raw), fix)
		case u.Hostname() == "":
			return fmt.Errorf("--nats-url %q names no host; %s", redactURL(raw), fix)
		}
		websocket[u.Scheme == "ws" || u.Scheme == "wss"] = true
	}
	if len(websocket) > 1 {
		return errors.New("--nats-url: ws:// and wss:// URLs go alone, not mixed with nats:// or tls:// ones (nats.go cannot mix them)")
	}
	return nil
}

// redactURL is a --nats-url with the password it may hold replaced, as
// url.URL.Redacted does, for errors and logs; it works on URLs that do
// not parse too.
func redactURL(raw string) string {
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw
	}
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 && i < at {
		start = i + len("://")
	}
	user, _, hasPassword := strings.Cut(raw[start:at], ":")
	if !hasPassword {
		return raw
	}
	return raw[:start] + user + ":xxxxx" + raw[at:]
}

// redactedURLs is --nats-url, every password in it replaced.
func (n *natsFlags) redactedURLs() string {
	urls := strings.Split(n.url, ",")
	for i, u := range urls {
		urls[i] = redactURL(strings.TrimSpace(u))
	}
	return strings.Join(urls, ",")
}
