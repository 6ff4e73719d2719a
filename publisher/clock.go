package publisher

import "time"

// Clock is the time the refresher decides and schedules by. The zero value
// is the real clock; tests shift it, and simulations run it faster (a day
// of rotations in seconds) to measure what a day costs.
type Clock struct {
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// AfterFunc calls f after d has passed on this clock; time.AfterFunc
	// when nil.
	AfterFunc func(d time.Duration, f func()) *time.Timer
}

func (c Clock) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

func (c Clock) afterFunc(d time.Duration, f func()) *time.Timer {
	if c.AfterFunc == nil {
		return time.AfterFunc(d, f)
	}
	return c.AfterFunc(d, f)
}
