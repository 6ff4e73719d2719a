package publisher

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// appCounters are counters whose first label is the appid, kept as numbers
// and made into metrics when scraped. A CounterVec's series costs about 500
// bytes (its label pairs, built once, and its creation time): with 100,000
// authorizers, the two vectors with a series per appid held 100 MB of the
// refresher's 260 MB heap (BENCHMARKS.md, "The writing side at 100,000
// authorizers"). A count held here is about 100 bytes, and an app's series
// are found without looking at the others'.
type appCounters struct {
	desc   *prometheus.Desc
	labels int // labels after the appid: 0, 1 or 2

	mu   sync.Mutex
	apps map[string][]appCount
}

// appCount is one series of an app: the values of its labels after the
// appid, in the Desc's order, and its count.
type appCount struct {
	labels [2]string
	n      uint64
}

// newAppCounters describes counters named name with the labels appid and
// then labels (at most two).
func newAppCounters(name, help string, labels ...string) *appCounters {
	if len(labels) > 2 {
		panic("publisher: appCounters take at most two labels after the appid")
	}
	return &appCounters{
		desc:   prometheus.NewDesc(name, help, append([]string{"appid"}, labels...), nil),
		labels: len(labels),
		apps:   map[string][]appCount{},
	}
}

// inc adds one to the series of appid and labels.
func (c *appCounters) inc(appid string, labels ...string) {
	var key [2]string
	copy(key[:], labels)
	c.mu.Lock()
	defer c.mu.Unlock()
	series := c.apps[appid]
	for i := range series {
		if series[i].labels == key {
			series[i].n++
			return
		}
	}
	c.apps[appid] = append(series, appCount{labels: key, n: 1})
}

// forget drops appid's series whose first label after the appid is one of
// firsts, or all of its series when none is given.
func (c *appCounters) forget(appid string, firsts ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(firsts) == 0 {
		delete(c.apps, appid)
		return
	}
	kept := slices.DeleteFunc(c.apps[appid], func(s appCount) bool { return slices.Contains(firsts, s.labels[0]) })
	if len(kept) == 0 {
		delete(c.apps, appid)
		return
	}
	c.apps[appid] = kept
}

func (c *appCounters) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect copies the counts and makes them into metrics after unlocking:
// a scrape of 200,000 series must not hold up the calls it counts.
func (c *appCounters) Collect(ch chan<- prometheus.Metric) {
	type series struct {
		appid string
		appCount
	}
	c.mu.Lock()
	all := make([]series, 0, len(c.apps))
	for appid, counts := range c.apps {
		for _, s := range counts {
			all = append(all, series{appid, s})
		}
	}
	c.mu.Unlock()
	values := make([]string, 1+c.labels)
	for _, s := range all {
		values[0] = s.appid
		copy(values[1:], s.labels[:c.labels])
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.n), values...)
	}
}
