// Package natstest gives the refresher's package tests what they share:
// an embedded NATS server with JetStream, on a loopback port, with its
// store in the test's temporary directory. The integration tests, which
// see the refresher from outside, have test/testenv.
package natstest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/kv"
)

// JetStream starts an embedded JetStream server and connects to it; both
// end with the test.
func JetStream(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return Connect(t, Server(t, nil).ClientURL())
}

// Server starts an embedded JetStream server, with its options changed by
// configure if it is not nil; it ends with the test.
func Server(t testing.TB, configure func(*server.Options)) *server.Server {
	t.Helper()
	opts, err := embedded.Options("127.0.0.1:-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(opts)
	}
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// Connect connects to url with opts; the connection ends with the test.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// streamStoreFailed is the JetStream error code of a stream whose store
// could not be made: after a file-stored stream is deleted, the server
// removes its directory a moment later, and a stream of the same name
// created meanwhile fails so.
const streamStoreFailed = 10049

// CreateBucketAgain creates the token bucket, as someone other than
// wxtoken would (revisions from 1), just after it was deleted: it tries
// again while the server is still removing the old one's store, until ctx
// ends.
func CreateBucketAgain(t testing.TB, ctx context.Context, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	for {
		b, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: kv.DefaultBucket, Storage: jetstream.FileStorage})
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return b
		case !errors.As(err, &apiErr) || apiErr.ErrorCode != streamStoreFailed:
			t.Fatal(err)
		}
		// The server tells no one when the old store is gone: ask again
		// shortly.
		select {
		case <-ctx.Done():
			t.Fatalf("the bucket could not be created again: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
