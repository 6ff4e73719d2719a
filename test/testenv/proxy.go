package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a target until Cut, which drops every
// connection and refuses new ones until Heal: a network partition between
// one client and its server, the rest of the test untouched. Stall is the
// other kind of partition, one that resets no connection. Delay makes it a
// WAN link: every byte arrives a fixed time after it was sent.
type Proxy struct {
	target string
	ln     net.Listener
	delay  atomic.Int64 // one way, in nanoseconds

	mu      sync.Mutex
	cut     bool
	stalled bool
	flowing *sync.Cond // signalled when a stall ends, by Heal or Cut
	conns   []net.Conn
}

// NewProxy listens on 127.0.0.1 and forwards to target ("host:port"),
// until cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := StartProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// StartProxy is NewProxy for a program (the benchmark): Close stops it.
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln}
	p.flowing = sync.NewCond(&p.mu)
	go p.accept()
	return p, nil
}

// Close stops accepting and drops every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
}

// URL is the proxy's NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Delay holds every byte back d in each direction, from when the proxy
// read it: a link with a round trip of 2d whatever the rate. It applies to
// the bytes read from then on.
func (p *Proxy) Delay(d time.Duration) { p.delay.Store(int64(d)) }

// Cut drops every connection through the proxy and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.flowing.Broadcast() // what a stall held back goes nowhere now
}

// Stall holds back every byte in both directions and closes nothing, until
// Heal: a partition that neither end notices until its pings go
// unanswered. What was sent meanwhile arrives after Heal, as TCP delivers
// it once a network heals.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// Heal ends a Cut, so that a client that reconnects gets through, or a
// Stall, so that the connections carry on.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.stalled = false, false
	p.flowing.Broadcast()
}

// awaitFlowing returns once bytes may be forwarded: no Stall, or a Cut
// since (the write then fails on the closed connection).
func (p *Proxy) awaitFlowing() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stalled && !p.cut {
		p.flowing.Wait()
	}
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			client.Close()
			continue
		}
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

// pipe forwards src to dst, each chunk Delay after it was read, holding
// writes back while the proxy is stalled: unread bytes then fill the
// sockets' buffers, and the sender's writes block as they would behind a
// partition.
func (p *Proxy) pipe(dst, src net.Conn) {
	type chunk struct {
		data []byte
		due  time.Time
	}
	// A window of chunks in flight: a sender that fills it waits, as it
	// would for a TCP window on a long link.
	inFlight := make(chan chunk, 256)
	done := make(chan struct{}) // the writer has stopped
	defer close(done)
	go func() {
		defer close(inFlight)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case inFlight <- chunk{buf[:n], time.Now().Add(time.Duration(p.delay.Load()))}:
				case <-done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer src.Close()
	defer dst.Close()
	for c := range inFlight {
		// Waiting out the link's delay is what the proxy simulates, not
		// a test waiting for something to happen.
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		p.awaitFlowing()
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}
