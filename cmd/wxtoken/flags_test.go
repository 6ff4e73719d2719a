package main

import (
	"testing"
)

// TestBadValuesNameTheFix: a value a flag cannot take, on the command line
// or in its environment variable, is refused with what to write instead.
func TestBadValuesNameTheFix(t *testing.T) {
	const duration = "not a duration: write one such as 10m, 30s or 1h30m"
	for _, r := range []refused{
		{[]string{"serve", "--refresh-before", "10"}, nil, `--refresh-before "10": ` + duration},
		{[]string{"serve"}, map[string]string{"WXTOKEN_LEASE_TTL": "ten seconds"}, `$WXTOKEN_LEASE_TTL "ten seconds": ` + duration},
		{[]string{"agent", "--upstream-timeout", "30"}, nil, `--upstream-timeout "30": ` + duration},
		{[]string{"agent", "--max-wait=1 minute"}, nil, `--max-wait "1 minute": ` + duration},
		{[]string{"serve", "--replicas", "three"}, nil, `--replicas "three": not a whole number: write one such as 3`},
		{[]string{"serve", "--upstream-rate", "fast"}, nil, `--upstream-rate "fast": not a number: write one such as 50 or 0.5`},
		{[]string{"refresh", "wx1234567890abcdef", "--stale-revision", "4x"}, nil, `--stale-revision "4x": not a whole number`},
		{[]string{"serve", "--demo", "--schedule", "every minute"}, nil, `write @every 30s or five cron fields`},
	} {
		r.check(t)
	}
}

// TestSizesTakeTheREADMEsUnits: --max-body and --max-retry-body take what
// the README writes (32MiB, 1MiB) and plain bytes, and refuse units that
// could mean 1000 or 1024.
func TestSizesTakeTheREADMEsUnits(t *testing.T) {
	for s, want := range map[string]int64{"32MiB": 32 << 20, "1MiB": 1 << 20, "512KiB": 512 << 10, "2GiB": 2 << 30, "1048576": 1 << 20, "64kib": 64 << 10, "0": 0} {
		if n, err := parseSize(s); err != nil || n != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, n, err, want)
		}
	}
	for _, s := range []string{"32MB", "32M", "1.5MiB", "MiB", "-1", "", "9999999999GiB"} {
		if n, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", s, n)
		}
	}
	for n, want := range map[int64]string{32 << 20: "32MiB", 1 << 20: "1MiB", 1536: "1536", 3 << 10: "3KiB", 0: "0"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
	for _, r := range []refused{
		// Both sizes read in their units, then compared.
		{[]string{"agent", "--max-body", "1MiB", "--max-retry-body", "2MiB"}, nil, "--max-retry-body is over --max-body"},
		{[]string{"agent"}, map[string]string{"WXTOKEN_AGENT_MAX_BODY": "1MiB", "WXTOKEN_AGENT_MAX_RETRY_BODY": "2MiB"}, "--max-retry-body is over --max-body"},
		{[]string{"agent", "--max-body", "32MB"}, nil, `--max-body "32MB": not a size: write one such as 32MiB, 512KiB or 1048576 (bytes)`},
	} {
		r.check(t)
	}
}
