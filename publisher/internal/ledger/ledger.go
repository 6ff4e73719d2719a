// Package ledger keeps the refresher's count of its own calls to WeChat in
// the token bucket, one key per app ("<appid>.ledger", kv.Ledger): counted
// before each call, by whichever replica makes it, so that the count
// outlives a failover, and so that a token that dies early can be told
// apart from one the refresher ended itself.
package ledger

import (
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
// another writer counted meanwhile.
type Book struct {
	mu    sync.Mutex
	pages map[string]*page // by appid
}

// page is what the book last knew of one app's ledger.
type page struct {
	mu     sync.Mutex // one change of the app's ledger at a time
	bucket jetstream.KeyValue
	rev    uint64 // 0: not known; read before writing
	l      kv.Ledger
	// high is the most this replica has seen the ledger count, today and
	// this month, and its latest call that ends the token: a ledger read
	// with less (restored from a backup with the token, or written again
	// from scratch) has it added back (see kv.Ledger.Raise), so that a
	// rollback neither frees a spent monthly budget nor makes a token the
	// refresher ended look ended by another party.
	high kv.Ledger
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
	if err := p.read(ctx, b, appid); err != nil {
		return kv.Ledger{}, false, err
	}
	return p.l, p.rev != 0 && p.l.Day != "", nil
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
		if p.rev == 0 {
			if err := p.read(ctx, b, appid); err != nil {
				return err
			}
		}
		l := p.l.Clone()
		if !change(&l) {
			return nil
		}
		data, err := kv.EncodeLedger(l)
		if err != nil {
			return err
		}
		var rev uint64
		if p.rev == 0 || p.l.Day == "" {
			rev, err = create(ctx, b, kv.LedgerKey(appid), data, p.rev)
		} else {
			rev, err = b.Update(ctx, kv.LedgerKey(appid), data, p.rev)
		}
		switch {
		case err == nil:
			p.l, p.rev, p.high = l, rev, l.Clone()
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

// create writes a first ledger: over rev, a key whose ledger could not be
// read (deleted, or undecodable), else a new key.
func create(ctx context.Context, b jetstream.KeyValue, key string, data []byte, rev uint64) (uint64, error) {
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

// read reads appid's ledger from b into p. A key missing leaves p's
// ledger empty at revision 0 (created by the next write); one that cannot
// be decoded leaves it empty at the key's revision (written over), so that
// counting starts again, from Since on.
func (p *page) read(ctx context.Context, b jetstream.KeyValue, appid string) error {
	p.bucket, p.rev, p.l = b, 0, kv.Ledger{AppID: appid}
	e, err := b.Get(ctx, kv.LedgerKey(appid))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		p.raise()
		return nil
	case err != nil:
		return fmt.Errorf("publisher: cannot read the ledger of %s: %w", appid, err)
	}
	p.rev = e.Revision()
	if l, err := kv.DecodeLedger(appid, e.Value()); err == nil {
		p.l = l
	}
	p.raise()
	return nil
}

// raise adds back to p's ledger what it lost of the most this replica saw
// (a restore rolled it back), and remembers the most.
func (p *page) raise() {
	if p.high.AppID == "" {
		p.high = p.l.Clone()
		return
	}
	p.l.Raise(p.high)
	p.high = p.l.Clone()
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
