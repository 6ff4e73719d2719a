package test

import (
	"testing"

	"github.com/wxtoken/wxtoken/test/benchkit"
)

// 1000 services report the same rejected token at once:
// go test -run '^$' -bench InvalidationStorm ./test
func BenchmarkInvalidationStorm(b *testing.B) { benchkit.Storm(b, 1000) }
