// Package swapprobe lets a benchmark see the instant a subscriber swaps a
// new token in: the moment Token() starts returning it, which is what a
// service sees. It costs a subscriber one atomic load per new token, and
// Token() nothing.
package swapprobe

import "sync/atomic"

var probe atomic.Pointer[func(appid string, revision uint64)]

// Set has f called, on the subscriber's own goroutine and right after the
// swap, with every new token's app and revision; nil stops it. f must be
// quick.
func Set(f func(appid string, revision uint64)) {
	if f == nil {
		probe.Store(nil)
		return
	}
	probe.Store(&f)
}

// Swapped tells the probe, if one is set, that appid's token at revision
// was swapped in.
func Swapped(appid string, revision uint64) {
	if f := probe.Load(); f != nil {
		(*f)(appid, revision)
	}
}
