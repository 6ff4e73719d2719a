package region

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxtoken/wxtoken/internal/bucket"
)

// Monitor follows the regions' copies of the token bucket from the hub,
// asking each region's JetStream about its copy across the leaf
// connection, and exports how old each copy may be as
// wxtoken_region_lag_seconds{region}: the time since the copy was last
// known to hold every value of the hub's bucket. While a region answers
// that its copy is current, it is the time since its copy last heard from
// the hub, as of the last answer (a second or so: the hub's mirror
// heartbeat); from the first question it does not answer so (a
// partition, a copy behind), it grows with the clock from the last time
// the copy was known current. A region never reached since the Monitor
// began counts from then.
type Monitor struct {
	hub     jetstream.JetStream            // the hub's own
	streams map[string]jetstream.JetStream // each region's JetStream, by domain
	bucket  string
	every   time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	current map[string]time.Time     // when each copy was last known current
	heard   map[string]time.Duration // its last answer's Heard, while its answers say it is current
	told    map[string]string        // what was last logged of each region
}

// MonitorEvery is how often Monitor asks each region.
const MonitorEvery = 5 * time.Second

// consumerCheckAfter is how long a copy that the hub can reach may go
// without hearing from the hub before Monitor looks at its consumer: a
// durable one's heartbeat comes every second.
const consumerCheckAfter = 3 * time.Second

// askTimeout bounds one question to a region: across a WAN, and not worth
// waiting on longer while the next comes MonitorEvery later.
const askTimeout = 3 * time.Second

// NewMonitor returns a Monitor of the copies of bucket in the regions
// (their JetStream domains) reached through nc, with its metric registered
// with reg. Run starts it.
func NewMonitor(nc *nats.Conn, bucketName string, regions []string, reg prometheus.Registerer, log *slog.Logger) (*Monitor, error) {
	hub, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("region: %w", err)
	}
	m := &Monitor{
		hub:     hub,
		streams: map[string]jetstream.JetStream{},
		bucket:  bucketName,
		every:   MonitorEvery,
		log:     log,
		current: map[string]time.Time{},
		heard:   map[string]time.Duration{},
		told:    map[string]string{},
	}
	began := time.Now()
	for _, r := range regions {
		if err := ValidateDomain(r); err != nil {
			return nil, fmt.Errorf("region: %w", err)
		}
		if _, dup := m.streams[r]; dup {
			return nil, fmt.Errorf("region: %q is named twice", r)
		}
		js, err := jetstream.NewWithDomain(nc, r)
		if err != nil {
			return nil, fmt.Errorf("region %q: %w", r, err)
		}
		m.streams[r], m.current[r] = js, began
		if reg != nil {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "wxtoken_region_lag_seconds",
				Help:        "Time since the region's copy of the token bucket was last known to hold every value of the hub's.",
				ConstLabels: prometheus.Labels{"region": r},
			}, func() float64 { return m.Lag(r).Seconds() }))
		}
	}
	return m, nil
}

// Lag is how old region's copy may be: the time since it was last known
// to hold every value of the hub's bucket.
func (m *Monitor) Lag(region string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if heard, ok := m.heard[region]; ok {
		return heard
	}
	return time.Since(m.current[region])
}

// Run asks every region about its copy until ctx ends, every MonitorEvery.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for region, js := range m.streams {
		wg.Go(func() {
			t := time.NewTicker(m.every)
			defer t.Stop()
			for {
				m.ask(ctx, region, js)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	}
	wg.Wait()
}

// ask asks region about its copy once, and takes in what it says.
func (m *Monitor) ask(ctx context.Context, region string, js jetstream.JetStream) {
	asked := time.Now()
	c, err := Ask(ctx, js, m.bucket)
	if ctx.Err() != nil {
		return
	}
	if err == nil && (!c.Current() || c.Heard > consumerCheckAfter) {
		m.keepConsumer(ctx, region, c)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.heard, region) // until it says again that it is current
	switch {
	case err != nil:
		m.tell(region, slog.LevelWarn, "cannot reach the region's copy of the token bucket; its age grows until it answers", "error", err)
	case !c.Current():
		m.tell(region, slog.LevelWarn, "the region's copy of the token bucket is not current",
			"behind", c.Behind, "last_heard", c.Heard, "problem", c.Problem)
	default:
		// As of Heard before the question left, it held everything.
		if known := asked.Add(-c.Heard); known.After(m.current[region]) {
			m.current[region] = known
		}
		m.heard[region] = c.Heard
		m.tell(region, slog.LevelInfo, "the region's copy of the token bucket is current")
	}
}

// keepConsumer puts back the hub's consumer that region's copy c follows,
// if it has one: a deletion of the hub's bucket, which the refresher
// repairs, takes it along, and the copy cannot make another.
func (m *Monitor) keepConsumer(ctx context.Context, region string, c Copy) {
	if c.consumer == nil {
		return
	}
	filters, err := keySubjects(m.bucket, c.Keys)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, askTimeout)
		defer cancel()
		_, err = ensureConsumer(ctx, m.hub, region, m.bucket, filters)
	}
	if err != nil {
		m.log.Warn("cannot put back the hub's consumer of the region's copy", "region", region, "consumer", c.consumer.Name, "error", err)
	}
}

// tell logs msg of region unless it was the last thing said of it: a
// partition is one line when it begins and one when it ends. Callers hold
// m.mu.
func (m *Monitor) tell(region string, level slog.Level, msg string, args ...any) {
	if m.told[region] == msg {
		return
	}
	first := m.told[region] == ""
	m.told[region] = msg
	if first && level == slog.LevelInfo {
		level = slog.LevelDebug // nothing to report at start
	}
	m.log.Log(context.Background(), level, msg, append([]any{"region", region}, args...)...)
}

// Ask reads the state of the copy of bucket in the region whose JetStream
// is js, within askTimeout.
func Ask(ctx context.Context, js jetstream.JetStream, bucketName string) (Copy, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, bucket.StreamName(bucketName))
	if err != nil {
		return Copy{}, err
	}
	c, ok := Of(stream.CachedInfo())
	if !ok {
		return Copy{}, fmt.Errorf("its bucket %q is no copy of the hub's (wxtoken region add makes one)", bucketName)
	}
	return c, nil
}
