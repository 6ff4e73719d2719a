package testenv

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wxtoken/wxtoken/internal/embedded"
)

// HubOptions makes opts a hub of regions: JetStream domain domain, and a
// listener for the regions' leaf connections on a free loopback port. The
// hub does not advertise that listener, so a region reconnects only
// through the address it was given (a Proxy), never around it.
func HubOptions(opts *server.Options, domain string) {
	opts.JetStreamDomain = domain
	opts.LeafNode.Host, opts.LeafNode.Port, opts.LeafNode.NoAdvertise = "127.0.0.1", -1, true
}

// HubNATS starts a single JetStream server that is a hub of regions, with
// JetStream domain domain, and returns it with where it accepts leaf
// connections.
func HubNATS(t testing.TB, domain string) (*server.Server, string) {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.ServerName = "hub-" + domain
	HubOptions(opts, domain)
	s := StartNATS(t, opts)
	return s, LeafAddr(opts)
}

// LeafAddr is where the server started with opts accepts leaf connections
// (the server sets the port it picked in opts).
func LeafAddr(opts *server.Options) string {
	return net.JoinHostPort(opts.LeafNode.Host, strconv.Itoa(opts.LeafNode.Port))
}

// RegionNATS starts a region's JetStream server, JetStream domain domain,
// whose leaf connection goes to hub ("host:port", a Proxy's address to put
// a WAN between them), as user:password when user is not empty. It
// returns without waiting for the connection (AwaitLeaf does).
func RegionNATS(t testing.TB, domain, hub, user, password string) *server.Server {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	RegionOptions(opts, domain, hub, user, password)
	return StartNATS(t, opts)
}

// RegionOptions makes opts a region's server: JetStream domain domain, its
// leaf connection to hub, as user:password when user is not empty.
func RegionOptions(opts *server.Options, domain, hub, user, password string) {
	opts.ServerName = "region-" + domain
	opts.JetStreamDomain = domain
	u := &url.URL{Scheme: "nats-leaf", Host: hub}
	if user != "" {
		u.User = url.UserPassword(user, password)
	}
	opts.LeafNode.Remotes = []*server.RemoteLeafOpts{{URLs: []*url.URL{u}}}
}

// AwaitLeaf waits until s has a leaf connection.
func AwaitLeaf(t testing.TB, ctx context.Context, s *server.Server) {
	t.Helper()
	for s.NumLeafNodes() == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("%s never made its leaf connection", s.Name())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
