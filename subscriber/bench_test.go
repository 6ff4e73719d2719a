package subscriber_test

import (
	"testing"

	"github.com/wxtoken/wxtoken/test/benchkit"
)

// Token reads, next to what many SDKs do instead: go test -bench Token -benchmem ./subscriber
func BenchmarkToken(b *testing.B) { benchkit.TokenRead(b) }

func BenchmarkTokenKVGetPerCall(b *testing.B) { benchkit.KVGetPerCall(b) }

// A Set's read of a key, with 10,000 keys held: go test -bench SetToken -benchmem ./subscriber
func BenchmarkSetToken(b *testing.B) { benchkit.SetTokenRead(b, false) }

// The same, each goroutine reading every key in turn.
func BenchmarkSetTokenEveryKey(b *testing.B) { benchkit.SetTokenRead(b, true) }
