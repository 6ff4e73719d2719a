package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/embedded"
	"github.com/wxtoken/wxtoken/internal/fakewechat"
	"github.com/wxtoken/wxtoken/publisher"
	"github.com/wxtoken/wxtoken/subscriber"
)

// footprintSample is what a process holds at one point.
type footprintSample struct {
	Subscribers int   `json:"subscribers"`
	RSS         int64 `json:"rss"`
	Goroutines  int   `json:"goroutines"`
}

func footprintApp(i int) string { return fmt.Sprintf("wxfoot%012d", i) }

// runFootprint is the child role "footprint": connected to NATS, it
// samples itself, then follows one app, then 100, sampling after each.
func runFootprint(url string, counts []int) {
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	sample := func(n int) {
		runtime.GC()
		debug.FreeOSMemory()
		json.NewEncoder(os.Stdout).Encode(footprintSample{Subscribers: n, RSS: statusKB(os.Getpid(), "VmRSS:") * 1024, Goroutines: runtime.NumGoroutine()})
	}
	sample(0)
	var subs []*subscriber.Subscriber
	for _, n := range counts {
		for len(subs) < n {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			sub, err := subscriber.New(ctx, nc, footprintApp(len(subs)))
			cancel()
			if err != nil {
				log.Fatal(err)
			}
			subs = append(subs, sub)
		}
		sample(n)
	}
}

// footprint measures the extra memory and goroutines of a process that
// follows 1 and then max(counts) apps, in a child process.
func footprint(counts []int) []footprintSample {
	most := counts[len(counts)-1]
	dir, _ := os.MkdirTemp("", "wxtoken-bench-footprint")
	defer os.RemoveAll(dir)
	opts, _ := embedded.Options("127.0.0.1:-1", dir)
	srv, err := embedded.Start(opts, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	fake := fakewechat.New(fakewechat.Config{})
	wechat := httptest.NewServer(fake)
	defer wechat.Close()
	var apps []publisher.App
	for i := range most {
		fake.AddApp(footprintApp(i), "s")
		apps = append(apps, publisher.App{AppID: footprintApp(i), Secret: publisher.NewSecret("s")})
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	r, err := publisher.New(nc, publisher.Config{Apps: apps, UpstreamURL: wechat.URL, UpstreamRate: 1000, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	self, _ := os.Executable()
	args := []string{"-role", "footprint", "-nats", srv.ClientURL(), "-counts"}
	var list string
	for i, c := range counts {
		if i > 0 {
			list += ","
		}
		list += strconv.Itoa(c)
	}
	cmd := exec.Command(self, append(args, list)...)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	var samples []footprintSample
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var s footprintSample
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			log.Fatalf("footprint child: %q", sc.Text())
		}
		samples = append(samples, s)
	}
	if err := cmd.Wait(); err != nil {
		log.Fatalf("footprint child: %v", err)
	}
	return samples
}
