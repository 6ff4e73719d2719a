package region

import "time"

// SetMonitorEvery makes m ask its regions every d, for tests that cannot
// wait MonitorEvery.
func SetMonitorEvery(m *Monitor, d time.Duration) { m.every = d }

// AtLeast is atLeast, for its test.
var AtLeast = atLeast
