package publisher

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// checkSourceAddr reports what is wrong with Config.SourceAddr, or nil.
func (c Config) checkSourceAddr() error {
	switch {
	case c.SourceAddr == "":
		return nil
	case net.ParseIP(c.SourceAddr) == nil:
		return fmt.Errorf("wechat-source-addr %q is not an IP address (one of this host's, without a port)", c.SourceAddr)
	case c.HTTPClient != nil:
		return errors.New("wechat-source-addr and an HTTP client of one's own: set the local address in that client's transport")
	}
	// An address this host does not have would fail every call to WeChat
	// later, each as a network error; say so now.
	conn, err := net.ListenPacket("udp", net.JoinHostPort(c.SourceAddr, "0"))
	if err != nil {
		return fmt.Errorf("wechat-source-addr %s is not an address of this host (`ip addr` lists them): %v", c.SourceAddr, err)
	}
	conn.Close()
	return nil
}

// upstreamHTTPClient is the HTTP client of the calls to WeChat and WeCom:
// Config.HTTPClient, or one whose connections go out from
// Config.SourceAddr, the address WeChat checks against an app's IP
// whitelist (on a host with several, the one whitelisted).
func (c Config) upstreamHTTPClient() *http.Client {
	if c.SourceAddr == "" {
		return c.HTTPClient
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.SourceAddr)}, Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = dialer.DialContext
	return &http.Client{Transport: transport}
}
