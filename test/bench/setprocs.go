package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxtoken/wxtoken/internal/swapprobe"
	"github.com/wxtoken/wxtoken/subscriber"
)

// runSetFollower is the child role "setfollower": one service process of
// a platform, following every key of the bucket with one Set on its own
// connection, and subscribed on it to the floors' subjects as part 2's
// connections are. It prints "ready" once the Set holds keys keys, then
// a line for each arrival: its kind (r: a new value swapped in, c and d:
// a core and a durable floor message), the revision or round, and the
// wall clock then (comparable across processes). It exits when its stdin
// closes.
func runSetFollower(url string, keys int) {
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	var line []byte
	arrived := func(kind byte, n uint64, at time.Time) {
		mu.Lock()
		line = fmt.Appendf(line[:0], "%c %d %d\n", kind, n, at.UnixNano())
		os.Stdout.Write(line)
		mu.Unlock()
	}
	for subject, kind := range map[string]byte{coreFloorSubject: 'c', durableFloorSubject: 'd'} {
		if _, err := nc.Subscribe(subject, func(msg *nats.Msg) {
			at := time.Now()
			arrived(kind, binary.BigEndian.Uint64(msg.Data), at)
		}); err != nil {
			log.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	set, err := subscriber.NewSet(ctx, nc)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	if held := len(set.Keys()); held != keys {
		log.Fatalf("a set holds %d keys, want %d", held, keys)
	}
	mu.Lock()
	fmt.Println("ready") // before any arrival's line
	mu.Unlock()
	swapprobe.Set(func(_ string, revision uint64) { arrived('r', revision, time.Now()) })
	io.Copy(io.Discard, os.Stdin)
	set.Close()
	nc.Close()
}

// newProcessFleet starts n setfollower processes against url, each
// following keys keys, and waits until every one holds them all: the
// fleet's arrivals are what they print. Their CPU time per receipt is not
// measured: a process's CPU between two arrivals is mostly its idle work
// (the runtime's and the connection's timers), which grows with the
// time between them, and a rotation's round is longer than a floor's.
func newProcessFleet(url string, n, keys int) *fleet {
	f := newEmptyFleet(n, func() time.Duration { return 0 })
	self, _ := os.Executable()
	var wg sync.WaitGroup
	var started atomic.Int64
	sem := make(chan struct{}, 8) // a Set's start reads the whole bucket: a few at a time
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(self, "-role", "setfollower", "-nats", url, "-keys", strconv.Itoa(keys))
			cmd.Stderr = os.Stderr
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				log.Fatal(err)
			}
			f.closers[i] = func() error { stdin.Close(); return cmd.Wait() }
			lines := bufio.NewScanner(stdout)
			if !lines.Scan() || lines.Text() != "ready" {
				log.Fatalf("setfollower %d: did not say ready (%q)", i, lines.Text())
			}
			go f.read(lines)
			progress("sets: %d of %d processes hold the %d keys", started.Add(1), n, keys)
		})
	}
	wg.Wait()
	return f
}

// read records the arrivals a setfollower prints.
func (f *fleet) read(lines *bufio.Scanner) {
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 3 {
			log.Fatalf("setfollower: %q", lines.Text())
		}
		n, _ := strconv.ParseUint(fields[1], 10, 64)
		at, _ := strconv.ParseInt(fields[2], 10, 64)
		var m map[uint64][]time.Time
		switch fields[0] {
		case "r":
			m = f.rotated
		case "c":
			m = f.core
		case "d":
			m = f.durable
		default:
			log.Fatalf("setfollower: %q", lines.Text())
		}
		f.arrived(m, n, time.Unix(0, at))
	}
}
