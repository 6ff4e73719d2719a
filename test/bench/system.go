package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
)

// benchApp is the app whose token the benchmarks follow.
const benchApp = "wxbench00000000001"

// runSystem is the child role "system": an embedded NATS server over TCP,
// the fake WeChat and a refresher for benchApp, in one process apart from
// the subscribers being measured. It prints the NATS URL and runs until its
// standard input closes (the parent ended).
func runSystem(expires, minForce time.Duration) {
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
	fake.AddApp(benchApp, "bench-secret")
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	r, err := publisher.New(nc, publisher.Config{
		Apps:        []publisher.App{{AppID: benchApp, Secret: publisher.NewSecret("bench-secret")}},
		UpstreamURL: wechat.URL, MinForceInterval: minForce,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Invalidate the current token on command, so that the parent can
	// force a real rotation: "bench.invalidate" gets a reply once done.
	// Like the parent, this process starts each round with no garbage to
	// collect, so that a round does not pay for the garbage of those
	// before it.
	nc.Subscribe("bench.invalidate", func(m *nats.Msg) {
		runtime.GC()
		fake.Issue(benchApp)
		m.Respond(nil)
	})
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

func startSystem(expires, minForce time.Duration) *system {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-role", "system", "-expires", expires.String(), "-min-force", minForce.String())
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
