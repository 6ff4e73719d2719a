package subscriber_test

import (
	"testing"

	"github.com/wxtoken/wxtoken/test/benchkit"
)

// Token reads, next to what many SDKs do instead: go test -bench Token -benchmem ./subscriber
func BenchmarkToken(b *testing.B) { benchkit.TokenRead(b) }

func BenchmarkTokenKVGetPerCall(b *testing.B) { benchkit.KVGetPerCall(b) }
