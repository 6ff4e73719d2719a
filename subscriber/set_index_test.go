package subscriber

import (
	"fmt"
	"sync"
	"testing"
)

// TestIndexFindsEveryKeyWhileItGrows: readers on other goroutines find
// every key added before they look, while the writer adds more and the
// table grows under them, and never a key not added.
func TestIndexFindsEveryKeyWhileItGrows(t *testing.T) {
	const n = 5000
	var ix index
	key := func(i int) string { return fmt.Sprintf("wx%016d", i) }
	if ix.get(key(0)) != nil {
		t.Fatal("an empty index found a key")
	}
	var added sync.WaitGroup
	progress := make(chan int, n) // how many keys are in
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for in := range progress {
				for _, i := range []int{0, in / 2, in - 1} {
					if e := ix.get(key(i)); e == nil || e.key != key(i) {
						t.Errorf("key %d of %d added: found %v", i, in, e)
					}
				}
				if e := ix.get(key(n + in)); e != nil {
					t.Errorf("found %q, never added", e.key)
				}
			}
		})
	}
	added.Go(func() {
		for i := range n {
			ix.add(&entry{key: key(i)})
			progress <- i + 1
		}
		close(progress)
	})
	added.Wait()
	readers.Wait()
	seen := map[string]bool{}
	for e := range ix.all() {
		seen[e.key] = true
	}
	if len(seen) != n {
		t.Errorf("all() yields %d keys, want %d", len(seen), n)
	}
}
