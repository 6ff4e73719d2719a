package main

import (
	"fmt"
	"log"
	"slices"
	"syscall"
	"time"
)

// dist summarises latencies.
type dist struct {
	n                  int
	p50, p90, p99, max time.Duration
}

func summarize(samples []time.Duration) dist {
	if len(samples) == 0 {
		return dist{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return dist{n: len(s), p50: at(0.50), p90: at(0.90), p99: at(0.99), max: s[len(s)-1]}
}

// ownCPU is the CPU time this process has used, user and system, to the
// microsecond (processCPU reads another process's, in 10 ms ticks).
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// benchLine prints a result in the benchmark format benchstat reads:
// name, iterations, then value-unit pairs.
func benchLine(name string, iterations int, pairs ...any) {
	fmt.Printf("Benchmark%s %d", name, iterations)
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Printf(" %v %s", pairs[i], pairs[i+1])
	}
	fmt.Println()
}
