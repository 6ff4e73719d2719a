// Package ledger keeps the refresher's count of its own calls to WeChat in
// the token bucket, one key per app ("<appid>.ledger", kv.Ledger): counted
// before each call, by whichever replica makes it, so that the count
// outlives a failover, and so that a token that dies early can be told
// apart from one the refresher ended itself.
package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/internal/bucket"
	"github.com/wxtoken/wxtoken/kv"
)

// attempts bounds the writes of one change that other writers keep
// beating: each lost race means another writer counted, and the next read
// sees it. Writers are few (the leader; a standby's probes; a leader
// whose term just ended), so a long run of lost races is no race but a
// fault.
const attempts = 20

// Book writes the ledgers of a token bucket with compare-and-swap. It
// remembers the last ledger it read or wrote of each app with its
// revision, so that a count costs one round trip to the bucket unless
// another writer counted meanwhile. It remembers it as JSON (about 500
// bytes), decoded only to be changed: a replica holds one page per app,
// 10,000 of them and more (BenchmarkBookMemory).
type Book struct {
	mu    sync.Mutex
	pages map[string]*page // by appid
}

// page is what the book last knew of one app's ledger.
type page struct {
	mu     sync.Mutex // one change of the app's ledger at a time
	bucket jetstream.KeyValue
	rev    uint64 // 0: not known; read before writing
	// known is the ledger as this replica last knew it, as JSON: the one
	// it last wrote, or last read, raised by what it knew before. It is
	// also the most this replica has seen the ledger count, today and
	// this month, and its latest call that ends the token: a ledger read
	// with less (restored from a backup with the token, or written again
	// from scratch) has it added back (see kv.Ledger.Raise), so that a
	// rollback neither frees a spent monthly budget nor makes a token the
	// refresher ended look ended by another party. Each read raises what
	// it reads by known and each write writes known changed, so the two
	// are one: nothing else is kept. nil with over nil: nothing known yet.
	known []byte
	// over is the ledger known when it does not encode: an empty one (a
	// key missing or unreadable, and nothing known before), or one raised
	// past the size of a value of the bucket, whose next change must
	// shrink it to be written.
	over *kv.Ledger
}

// New returns an empty book.
func New() *Book { return &Book{pages: map[string]*page{}} }

// Count counts one call under api for appid at now in b's ledger, before
// the call is made; ends says that the call ends the app's token held.
func (bk *Book) Count(ctx context.Context, b jetstream.KeyValue, appid, api string, now time.Time, ends bool) error {
	return bk.Update(ctx, b, appid, func(l *kv.Ledger) bool {
		l.Count(api, now, ends)
		return true
	})
}

// Read returns appid's ledger as b holds it now; ok is false when b holds
// none (or none this version can read).
func (bk *Book) Read(ctx context.Context, b jetstream.KeyValue, appid string) (l kv.Ledger, ok bool, err error) {
	p := bk.page(appid)
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	if l, err = p.read(ctx, b, appid); err != nil {
		return kv.Ledger{}, false, err
	}
	return l, p.rev != 0 && l.Day != "", nil
}

// Update applies change to appid's ledger in b and writes it, with
// compare-and-swap, reading it again and applying change again when
// another writer changed it first. change returns false to write nothing.
func (bk *Book) Update(ctx context.Context, b jetstream.KeyValue, appid string, change func(*kv.Ledger) bool) error {
	p := bk.page(appid)
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, bucket.Timeout)
	defer cancel()
	if p.bucket != b {
		p.bucket, p.rev = b, 0 // another bucket (a repaired one): read it first
	}
	for attempt := 1; ; attempt++ {
		l, err := p.current(ctx, b, appid)
		if err != nil {
			return err
		}
		if !change(&l) {
			return nil
		}
		data, err := kv.EncodeLedger(l)
		if err != nil {
			return err
		}
		rev, err := write(ctx, b, kv.LedgerKey(appid), data, p.rev)
		switch {
		case err == nil:
			p.rev, p.known, p.over = rev, data, nil
			return nil
		case bucket.IsConflict(err) && attempt < attempts:
			p.rev = 0 // another writer counted: read, and count again
			if err := partWriters(ctx, attempt); err != nil {
				return fmt.Errorf("publisher: cannot count in the ledger of %s: %w", appid, err)
			}
			continue
		}
		p.rev = 0
		return fmt.Errorf("publisher: cannot count in the ledger of %s: %w", appid, err)
	}
}

// write writes data under key over rev: a key whose ledger was read (or
// could not be decoded, or was deleted), or, at rev 0, a new key.
func write(ctx context.Context, b jetstream.KeyValue, key string, data []byte, rev uint64) (uint64, error) {
	if rev != 0 {
		return b.Update(ctx, key, data, rev)
	}
	return b.Create(ctx, key, data)
}

func (bk *Book) page(appid string) *page {
	bk.mu.Lock()
	defer bk.mu.Unlock()
	p := bk.pages[appid]
	if p == nil {
		p = &page{}
		bk.pages[appid] = p
	}
	return p
}

// current returns appid's ledger to change: the one p knows at its
// revision, or, when p knows no revision, b's, read first.
func (p *page) current(ctx context.Context, b jetstream.KeyValue, appid string) (kv.Ledger, error) {
	if p.rev != 0 {
		if l, ok := p.ledger(appid); ok {
			return l, nil
		}
	}
	return p.read(ctx, b, appid)
}

// ledger decodes the ledger p knows, a copy of its own to change; an
// empty one when p knows none. ok is false only when known does not
// decode, which known, made by EncodeLedger or accepted by DecodeLedger,
// always does: p then forgets it, and the bucket's copy is read again.
func (p *page) ledger(appid string) (l kv.Ledger, ok bool) {
	switch {
	case p.over != nil:
		return p.over.Clone(), true
	case p.known == nil:
		return kv.Ledger{AppID: appid}, true
	}
	l, err := kv.DecodeLedger(appid, p.known)
	if err != nil {
		p.known, p.rev = nil, 0
		return kv.Ledger{AppID: appid}, false
	}
	return l, true
}

// read reads appid's ledger from b, raises it by what p knew, and
// returns it; p knows it from then on. A key missing gives an empty
// ledger at revision 0 (created by the next write); one that cannot be
// decoded gives an empty one at the key's revision (written over), so
// that counting starts again, from Since on.
func (p *page) read(ctx context.Context, b jetstream.KeyValue, appid string) (kv.Ledger, error) {
	knew := p.known != nil || p.over != nil
	high, _ := p.ledger(appid) // the most this replica saw
	p.bucket, p.rev = b, 0
	e, err := b.Get(ctx, kv.LedgerKey(appid))
	l, data := kv.Ledger{AppID: appid}, []byte(nil)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return kv.Ledger{}, fmt.Errorf("publisher: cannot read the ledger of %s: %w", appid, err)
	default:
		p.rev = e.Revision()
		if read, err := kv.DecodeLedger(appid, e.Value()); err == nil {
			l, data = read, bytes.Clone(e.Value())
		}
	}
	if knew {
		l.Raise(high) // a rollback: add back what it lost
		data = nil    // encoded again, raised
	}
	p.keep(l, data)
	return l, nil
}

// keep makes l, whose JSON is data (nil: to be encoded), the ledger p
// knows.
func (p *page) keep(l kv.Ledger, data []byte) {
	if data == nil {
		var err error
		if data, err = kv.EncodeLedger(l); err != nil {
			c := l.Clone() // the caller changes l's maps
			p.known, p.over = nil, &c
			return
		}
	}
	p.known, p.over = data, nil
}

// partWriters waits a random while, up to a millisecond per race lost so
// far: two writers that lost to each other would otherwise read and write
// again in step, and lose again.
func partWriters(ctx context.Context, lost int) error {
	t := time.NewTimer(rand.N(time.Duration(lost) * time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
