package test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/test/testenv"
)

// The hub and the regions of these tests run the repository's own
// configuration files: nats.conf with its "#hub>" lines switched on, and
// nats-region.conf. Only where each server listens and stores changes.

const regionPassword = "pw-region"

// confWithLines returns the file's configuration with the lines behind
// each marker switched on ("#hub> x" becomes "x").
func confWithLines(t testing.TB, file string, markers ...string) string {
	t.Helper()
	conf, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(conf), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		for _, m := range markers {
			if rest, ok := strings.CutPrefix(trimmed, m+" "); ok {
				line = strings.Repeat(" ", len(line)-len(trimmed)) + rest
			}
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

// loadConf parses conf with the environment env (and the users'
// passwords), as nats-server would, and returns its options listening on a
// free loopback port and storing in a temporary directory.
func loadConf(t testing.TB, conf string, env map[string]string) *server.Options {
	t.Helper()
	for user, pw := range passwords {
		t.Setenv("WXTOKEN_"+strings.ToUpper(user)+"_PASSWORD", pw)
	}
	t.Setenv("WXTOKEN_REGION_PASSWORD", regionPassword)
	for k, v := range env {
		t.Setenv(k, v)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := embedded.FromConfigFile(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir = "127.0.0.1", -1, 0, t.TempDir()
	return opts
}

// hubConfOptions are the options of a hub server from nats.conf.
func hubConfOptions(t testing.TB) *server.Options {
	t.Helper()
	opts := loadConf(t, confWithLines(t, "../nats.conf", "#hub>"), nil)
	if opts.JetStreamDomain != "hub" || opts.LeafNode.Port == 0 {
		t.Fatalf("nats.conf as a hub: domain %q, leaf port %d", opts.JetStreamDomain, opts.LeafNode.Port)
	}
	opts.LeafNode.Host, opts.LeafNode.Port, opts.LeafNode.NoAdvertise = "127.0.0.1", -1, true
	return opts
}

// regionConfOptions are the options of region's server from
// nats-region.conf, its leaf connection going to hub ("host:port").
func regionConfOptions(t testing.TB, region, hub string) *server.Options {
	t.Helper()
	leaf := (&url.URL{Scheme: "nats-leaf", User: url.UserPassword("region", regionPassword), Host: hub}).String()
	opts := loadConf(t, confWithLines(t, "../nats-region.conf"), map[string]string{"WXTOKEN_REGION": region, "WXTOKEN_HUB_LEAF_URL": leaf})
	if opts.JetStreamDomain != region || opts.ServerName != region {
		t.Fatalf("nats-region.conf: domain %q, server name %q", opts.JetStreamDomain, opts.ServerName)
	}
	return opts
}

// connectUser connects to url as one of the configurations' users, with its
// inbox prefix.
func connectUser(t testing.TB, url, name string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return testenv.Connect(t, url, append([]nats.Option{nats.UserInfo(name, passwords[name]), nats.CustomInboxPrefix("_INBOX_" + name)}, opts...)...)
}

// hubCluster starts three hub servers from nats.conf, clustered, and waits
// for their JetStream meta leader; it returns them with their client URLs.
func hubCluster(t *testing.T, ctx context.Context) ([]*server.Server, []*server.Options, string) {
	t.Helper()
	routePorts := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	servers := make([]*server.Server, 3)
	all := make([]*server.Options, 3)
	var urls []string
	for i := range servers {
		opts := hubConfOptions(t)
		opts.ServerName = fmt.Sprintf("hub-%d", i+1)
		opts.Cluster = server.ClusterOpts{Name: "hub", Host: "127.0.0.1", Port: routePorts[i]}
		opts.Routes = routes
		servers[i], all[i] = testenv.StartNATS(t, opts), opts
		urls = append(urls, servers[i].ClientURL())
	}
	awaitMetaLeader(t, ctx, servers, len(servers))
	return servers, all, strings.Join(urls, ",")
}

// awaitNoViolation fails the test if errs gets a permission violation.
func permissionErrors(t testing.TB) (nats.Option, <-chan error) {
	errs := make(chan error, 64)
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}), errs
}

var _ = time.Second
