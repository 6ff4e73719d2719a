package subscriber

import (
	"hash/maphash"
	"iter"
	"sync/atomic"
)

// index finds a Set's entry by its key with no lock, for Set.Token: an
// open-addressing hash table whose slots are each written once, from nil
// to an entry that stays there (a key is never taken out: a removal is a
// state of its entry). A reader sees a slot either empty or filled, both
// correct. The table grows by being copied into one twice its size, which
// then replaces it; readers still on the old one see every key it had.
// Adding a key costs O(1) amortised, where copying a map on each new key
// would cost the Set's size: a platform authorizing thousands of accounts
// at once adds them one by one.
//
// One writer at a time: the Set's applying lock.
type index struct {
	table atomic.Pointer[table]
	count int // entries; under the writer's lock
}

type table struct {
	seed  maphash.Seed
	mask  uint64
	slots []atomic.Pointer[entry]
}

// minSlots is the size of a new index's table.
const minSlots = 64

func newTable(slots int) *table {
	return &table{seed: maphash.MakeSeed(), mask: uint64(slots - 1), slots: make([]atomic.Pointer[entry], slots)}
}

// get returns key's entry, or nil.
func (ix *index) get(key string) *entry {
	t := ix.table.Load()
	if t == nil {
		return nil
	}
	for i := maphash.String(t.seed, key) & t.mask; ; i = (i + 1) & t.mask {
		if e := t.slots[i].Load(); e == nil || e.key == key {
			return e
		}
	}
}

// add adds e, whose key it does not have. The table is kept at most half
// full, so that a lookup probes a slot or two.
func (ix *index) add(e *entry) {
	t := ix.table.Load()
	if t == nil {
		t = newTable(minSlots)
		ix.table.Store(t)
	}
	if 2*(ix.count+1) > len(t.slots) {
		grown := newTable(2 * len(t.slots))
		for old := range t.all() {
			grown.put(old)
		}
		grown.put(e)
		ix.table.Store(grown)
	} else {
		t.put(e)
	}
	ix.count++
}

// put fills the first free slot of e's probe sequence.
func (t *table) put(e *entry) {
	i := maphash.String(t.seed, e.key) & t.mask
	for t.slots[i].Load() != nil {
		i = (i + 1) & t.mask
	}
	t.slots[i].Store(e)
}

// all yields every entry, in no particular order.
func (ix *index) all() iter.Seq[*entry] {
	t := ix.table.Load()
	if t == nil {
		return func(func(*entry) bool) {}
	}
	return t.all()
}

func (t *table) all() iter.Seq[*entry] {
	return func(yield func(*entry) bool) {
		for i := range t.slots {
			if e := t.slots[i].Load(); e != nil && !yield(e) {
				return
			}
		}
	}
}
