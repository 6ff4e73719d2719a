package subscriber

import (
	"encoding/binary"
	"iter"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
	"unsafe"
)

// index finds a Set's entry by its key with no lock, for Set.Token: an
// open-addressing hash table whose slots are each written once, from empty
// to an entry that stays there (a key is never taken out: a removal is a
// state of its entry). A reader sees a slot either empty or filled, both
// correct. The table grows by being copied into one twice its size, which
// then replaces it; readers still on the old one see every key it had.
// Adding a key costs O(1) amortised, where copying a map on each new key
// would cost the Set's size: a platform authorizing thousands of accounts
// at once adds them one by one.
//
// A read is what the 10 ns are spent on: a slot holds its key's
// hash beside the entry, so that a probe passes other keys without
// reaching into their entries (a cache miss each, with 10,000 keys), and
// keys are hashed and compared a word at a time.
//
// One writer at a time: the Set's applying lock.
type index struct {
	table atomic.Pointer[table]
	count int // entries; under the writer's lock
}

type table struct {
	seed  uint64
	mask  uint64
	slots []slot
}

type slot struct {
	hash  atomic.Uint64 // stored before entry, read after it
	entry atomic.Pointer[entry]
}

// minSlots is the size of a new index's table.
const minSlots = 64

func newTable(slots int) *table {
	return &table{seed: rand.Uint64() | 1, mask: uint64(slots - 1), slots: make([]slot, slots)}
}

// get returns key's entry, or nil.
func (ix *index) get(key string) *entry {
	t := ix.table.Load()
	if t == nil {
		return nil
	}
	h := hashKey(t.seed, key)
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		e := s.entry.Load()
		if e == nil || (s.hash.Load() == h && sameKey(e.key, key)) {
			return e
		}
	}
}

// current returns the value held of key, or nil.
func (ix *index) current(key string) *Token {
	if e := ix.get(key); e != nil {
		return e.current.Load()
	}
	return nil
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
	h := hashKey(t.seed, e.key)
	i := h & t.mask
	for t.slots[i].entry.Load() != nil {
		i = (i + 1) & t.mask
	}
	t.slots[i].hash.Store(h)
	t.slots[i].entry.Store(e)
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
			if e := t.slots[i].entry.Load(); e != nil && !yield(e) {
				return
			}
		}
	}
}

// hashKey hashes key with seed, a word at a time: keys are short (an
// appid is 18 bytes), and the runtime's hash costs a call. It is
// wyhash's scheme: each pair of words is folded into the state with one
// 64x64 -> 128-bit multiply.
func hashKey(seed uint64, key string) uint64 {
	const p0, p1 = 0xa0761d6478bd642f, 0xe7037ed1a0b428db
	n := len(key)
	b := unsafe.Slice(unsafe.StringData(key), n)
	seed ^= p0
	var a, c uint64
	switch {
	case n > 16:
		for rest := b; len(rest) > 16; rest = rest[16:] {
			seed = mum(binary.LittleEndian.Uint64(rest)^p1, binary.LittleEndian.Uint64(rest[8:])^seed)
		}
		// The last two words end at the key's end, overlapping those before.
		a, c = binary.LittleEndian.Uint64(b[n-16:]), binary.LittleEndian.Uint64(b[n-8:])
	case n >= 8:
		a, c = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[n-8:])
	default:
		for i, x := range b {
			a |= uint64(x) << (8 * i)
		}
	}
	return mum(p1^uint64(n), mum(a^p1, c^seed))
}

// mum folds the 128-bit product of a and b into 64 bits.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// sameKey reports whether a and b are equal, a word at a time.
func sameKey(a, b string) bool {
	n := len(a)
	if n != len(b) {
		return false
	}
	if n < 8 {
		return a == b
	}
	pa, pb := unsafe.Slice(unsafe.StringData(a), n), unsafe.Slice(unsafe.StringData(b), n)
	for i := 0; i < n-8; i += 8 {
		if binary.LittleEndian.Uint64(pa[i:]) != binary.LittleEndian.Uint64(pb[i:]) {
			return false
		}
	}
	return binary.LittleEndian.Uint64(pa[n-8:]) == binary.LittleEndian.Uint64(pb[n-8:])
}
