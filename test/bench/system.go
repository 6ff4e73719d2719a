package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher"
)

// benchApp is the app whose token the benchmarks follow.
const benchApp = "wxbench00000000001"

// benchKey is the i-th app of a system with many: benchKey(0) is benchApp.
func benchKey(i int) string { return fmt.Sprintf("wxbench%011d", i+1) }

// runSystem is the child role "system": an embedded NATS server over TCP,
// the fake WeChat and a refresher for apps apps (benchApp the first), in
// one process apart from the subscribers being measured. It prints the
// NATS URL and runs until its standard input closes (the parent ended).
func runSystem(expires, minForce time.Duration, apps int) {
	dir, err := os.MkdirTemp("", "wxtoken-bench-system")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	opts, err := embedded.Options("127.0.0.1:-1", dir)
	if err != nil {
		log.Fatal(err)
	}
	opts.MaxPending = 256 << 20 // 1000 watchers in one client process
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	fake := fakewechat.New(fakewechat.Config{ExpiresIn: expires, Overlap: -1})
	var kept []publisher.App
	for i := range apps {
		fake.AddApp(benchKey(i), "bench-secret")
		kept = append(kept, publisher.App{AppID: benchKey(i), Secret: publisher.NewSecret("bench-secret")})
	}
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	r, err := publisher.New(nc, publisher.Config{
		Apps:        kept,
		UpstreamURL: wechat.URL, MinForceInterval: minForce,
		UpstreamRate: 5000, // many apps fetched in seconds
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Invalidate the current token of the app named (benchApp if none) on
	// command, so that the parent can force a real rotation:
	// "bench.invalidate" gets a reply once done.
	// Like the parent, this process starts each round with no garbage to
	// collect, so that a round does not pay for the garbage of those
	// before it.
	nc.Subscribe("bench.invalidate", func(m *nats.Msg) {
		runtime.GC()
		app := string(m.Data)
		if app == "" {
			app = benchApp
		}
		fake.Issue(app)
		m.Respond(nil)
	})
	serveFloors(srv.ClientURL())
	fmt.Printf("NATS_URL=%s\n", srv.ClientURL())
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent goes away
	cancel()
	<-done
	nc.Close()
}

// system is a running child "system" process.
type system struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // held: the child runs until it closes
	url   string
}

func startSystem(expires, minForce time.Duration, apps int) *system {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-role", "system", "-expires", expires.String(), "-min-force", minForce.String(),
		"-system-apps", strconv.Itoa(apps))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		log.Fatalf("system process: %v", err)
	}
	return &system{cmd: cmd, stdin: stdin, url: strings.TrimSpace(strings.TrimPrefix(line, "NATS_URL="))}
}

func (s *system) stop() {
	s.stdin.Close()
	s.cmd.Wait()
}

// awaitKeys waits until the system's bucket holds a value of each of its
// first n apps.
func (s *system) awaitKeys(n int) {
	nc, err := nats.Connect(s.url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var bucket jetstream.KeyValue // bound once it exists
	for {
		if bucket == nil {
			bucket, _ = kv.Bind(ctx, js, "")
		}
		if bucket != nil && tokens(ctx, bucket) >= n {
			return
		}
		select {
		case <-ctx.Done():
			log.Fatalf("the system's %d apps are not all in the bucket: %v", n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		progress("waiting for the system's %d tokens", n)
	}
}

// tokens counts the token keys in the bucket. The bucket holds more than
// tokens (each app's ledger, the lease), and the keys of those have two
// tokens: an app's token is the key of one.
func tokens(ctx context.Context, b jetstream.KeyValue) int {
	keys, err := b.ListKeysFiltered(ctx, "*")
	if err != nil {
		return 0
	}
	n := 0
	for range keys.Keys() {
		n++
	}
	return n
}

// floorRequest asks the system's plain client for one floor message.
type floorRequest struct {
	Durable bool   `json:"durable"` // a compare-and-swap write first
	Round   uint64 `json:"round"`
	Size    int    `json:"size"`
}

// floorReply says when the floor message left: before its write (or its
// publish), and when the write was stored, on the server's clock.
type floorReply struct {
	Sent   time.Time `json:"sent"`
	Stored time.Time `json:"stored"`
}

// serveFloors runs, in the system's process and on a connection of its own
// as the refresher's is, the plain client whose messages are the floors:
// on "bench.floor", a core publish to the floor subject, or (durable) a
// compare-and-swap write of the same bytes to a bucket made as the token
// bucket is, its acknowledgement, then the publish. It answers when each
// left.
func serveFloors(url string) {
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	floor, err := bucket.Open(ctx, js, bucket.Config{Name: "bench_floor"})
	if err != nil {
		log.Fatal(err)
	}
	rev, err := floor.Put(ctx, "floor", nil)
	if err != nil {
		log.Fatal(err)
	}
	control, err := nats.Connect(url) // its requests do not queue behind the floor's messages
	if err != nil {
		log.Fatal(err)
	}
	control.Subscribe("bench.floor", func(m *nats.Msg) {
		var req floorRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			log.Fatal(err)
		}
		runtime.GC() // as the rotations' rounds
		payload := make([]byte, max(req.Size, 8))
		binary.BigEndian.PutUint64(payload, req.Round)
		var reply floorReply
		subject := coreFloorSubject
		reply.Sent = time.Now()
		if req.Durable {
			// As the refresher stores a value: a compare-and-swap on the
			// key's last revision, acknowledged, then announced.
			if rev, err = floor.Update(ctx, "floor", payload, rev); err != nil {
				log.Fatal(err)
			}
			subject = durableFloorSubject
		}
		msg := nats.NewMsg(subject)
		msg.Data = payload
		if req.Durable {
			// The message a value is: the record, its revision in a
			// header (which every receiver's client library parses).
			msg.Header.Set(kv.RevisionHeader, strconv.FormatUint(rev, 10))
		}
		if err := nc.PublishMsg(msg); err != nil {
			log.Fatal(err)
		}
		nc.Flush() // as the refresher flushes a new value at once
		if req.Durable {
			stored, err := floor.GetRevision(ctx, "floor", rev)
			if err != nil {
				log.Fatal(err)
			}
			reply.Stored = stored.Created()
		}
		data, _ := json.Marshal(reply)
		m.Respond(data)
	})
}
