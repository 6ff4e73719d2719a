package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// keySet follows the keys served on one subscriber.Set (one subscription,
// one read of the bucket, a few hundred bytes per key), and knows which key
// a token value belongs to.
type keySet struct {
	a   *Agent
	set atomic.Pointer[subscriber.Set] // once it has read the bucket

	mu       sync.RWMutex
	wanted   map[string]bool      // every key served, held or not yet
	held     map[string]*followed // the keys with a value, or a removal, in memory
	byToken  map[string]string    // a token of ours, current or recent, -> its key
	listed   bool                 // every key of the bucket is wanted (or --keys were given)
	wasReady bool                 // as last logged
	closed   bool
	followed sync.WaitGroup // the goroutines starting the set and warning of missing keys
}

// followed is what the agent keeps of one key: the Set's reads of it, and
// what long polls wait on.
type followed struct {
	key string
	sub subscriber.Member

	mu      sync.Mutex
	changed chan struct{} // closed and dropped when a new value is held; made by the first long poll
	recent  []string      // a token key's values, the current one first
	warned  uint64        // the last revision logged as served expired

	rendered atomic.Pointer[renderedAnswer] // the last read's answer
}

// warnExpired reports whether revision's expiry is yet to be logged.
func (f *followed) warnExpired(revision uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.warned == revision {
		return false
	}
	f.warned = revision
	return true
}

// recentTokens is how many of a key's earlier tokens are still known as
// ours: a client holding one is given the current one instead.
const recentTokens = 4

func newKeySet(a *Agent) *keySet {
	return &keySet{a: a, wanted: map[string]bool{}, held: map[string]*followed{}, byToken: map[string]string{}}
}

// start follows the configured keys, or every key of the bucket.
func (ks *keySet) start(ctx context.Context) {
	if keys := ks.a.cfg.Keys; len(keys) > 0 {
		ks.mu.Lock()
		ks.listed = true
		for _, key := range keys {
			ks.wanted[key] = true
		}
		ks.mu.Unlock()
		ks.followed.Go(func() { ks.warnMissing(ctx) })
	}
	ks.followed.Go(func() { ks.follow(ctx) })
}

// follow starts the Set, which waits for the bucket to exist and reads it,
// and takes in what it holds.
func (ks *keySet) follow(ctx context.Context) {
	cfg := ks.a.cfg
	opts := []subscriber.Option{
		subscriber.WithBucket(cfg.Bucket),
		subscriber.WithSubjectPrefix(cfg.SubjectPrefix),
		subscriber.WithLogger(ks.a.log),
		subscriber.OnSetRotate(func(set *subscriber.Set, key string, t subscriber.Token) { ks.rotated(set, key, t) }),
		subscriber.OnSetError(func(set *subscriber.Set, key string, err error) {
			if errors.Is(err, subscriber.ErrRemoved) {
				ks.a.log.Warn("key removed: it is answered 410 removed from now on", "key", key, "error", err)
				ks.hold(set, key).wake() // long polls answer it at once
			}
		}),
	}
	if len(cfg.Keys) > 0 {
		opts = append(opts, subscriber.WithKeys(cfg.Keys...))
	}
	set, err := subscriber.NewSet(ctx, cfg.Conn, opts...)
	if err != nil {
		if ctx.Err() == nil { // the options are the agent's own: this is a bug
			ks.a.log.Error("cannot follow the keys", "error", err)
		}
		return
	}
	ks.set.Store(set)
	keys := set.Keys()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		set.Close()
		return
	}
	for _, key := range keys {
		ks.holdLocked(set, key)
	}
	if len(cfg.Keys) == 0 {
		ks.listed = true
		ks.a.log.Info("serving every key in the bucket", "bucket", cfg.Bucket, "keys", len(keys))
	}
	ks.logReadyLocked()
}

// warnMissing warns once of each key of Keys still not held after
// missingKeyWait. A key the bucket does not have (a typo, an app the
// refresher does not keep) would otherwise show only in /readyz; it is
// still followed, and served once it appears.
func (ks *keySet) warnMissing(ctx context.Context) {
	wait := time.NewTimer(ks.a.missingKeyWait)
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return
	case <-wait.C:
	}
	var missing []string
	ks.mu.RLock()
	for _, key := range ks.a.cfg.Keys {
		if ks.held[key] == nil {
			missing = append(missing, key)
		}
	}
	ks.mu.RUnlock()
	if len(missing) == 0 {
		return
	}
	log, bucket := ks.a.log, ks.a.cfg.Bucket
	absent, err := ks.absent(ctx, missing)
	for _, key := range missing {
		switch {
		case err != nil:
			log.Warn("a key of --keys has no value yet, and the bucket could not be read to say why", "key", key,
				"waited", ks.a.missingKeyWait, "bucket", bucket, "error", err)
		case absent[key]:
			log.Warn("a key of --keys is not in the bucket: check it against `wxtoken status` and the refresher's apps file; "+
				"it is served once it appears", "key", key, "waited", ks.a.missingKeyWait, "bucket", bucket)
		default:
			log.Warn("a key of --keys is in the bucket, but no value of it could be used yet", "key", key,
				"waited", ks.a.missingKeyWait, "bucket", bucket)
		}
	}
}

// absent returns which of keys the bucket has no value of (none ever, or
// deleted). Each is read alone: a bucket may hold thousands of keys.
func (ks *keySet) absent(ctx context.Context, keys []string) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	js, err := jetstream.New(ks.a.cfg.Conn)
	if err != nil {
		return nil, err
	}
	b, err := kv.Bind(ctx, js, ks.a.cfg.Bucket)
	if err != nil {
		return nil, err
	}
	absent := map[string]bool{}
	for _, key := range keys {
		_, err := b.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			absent[key] = true
		case err != nil:
			return nil, err
		}
	}
	return absent, nil
}

// hold returns key's followed, made and held if it is not yet: set holds
// a value of key, or its removal.
func (ks *keySet) hold(set *subscriber.Set, key string) *followed {
	ks.mu.RLock()
	f := ks.held[key]
	ks.mu.RUnlock()
	if f != nil {
		return f
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.holdLocked(set, key)
}

// holdLocked is hold. A key held once the bucket's keys are listed is
// logged; those listed are not, each: there may be thousands. Callers
// hold ks.mu.
func (ks *keySet) holdLocked(set *subscriber.Set, key string) *followed {
	if f := ks.held[key]; f != nil {
		return f
	}
	f := &followed{key: key, sub: set.Member(key)}
	ks.held[key] = f
	ks.wanted[key] = true
	if ks.listed {
		ks.a.log.Info("holding key", "key", key, "revision", f.sub.Token().Revision)
	}
	ks.logReadyLocked()
	return f
}

// loggedKeys is the most keys a log line names: past it, it counts them
// (an agent may serve a platform's thousands of authorizers).
const loggedKeys = 32

// logReadyLocked logs the agent becoming ready. Callers hold ks.mu.
func (ks *keySet) logReadyLocked() {
	ready := ks.readyLocked() == nil
	if ready && !ks.wasReady {
		if len(ks.held) > loggedKeys {
			ks.a.log.Info("agent ready", "keys", len(ks.held))
		} else {
			ks.a.log.Info("agent ready", "keys", strings.Join(ks.sortedLocked(), ","))
		}
	}
	ks.wasReady = ready
}

// rotated takes in a key's new value: long polls are told, and a token is
// known as ours.
func (ks *keySet) rotated(set *subscriber.Set, key string, t subscriber.Token) {
	f := ks.hold(set, key)
	if _, kind := kv.SplitKey(key); kind == kv.KindToken {
		ks.mu.Lock()
		if ks.byToken[t.Value] != f.key {
			ks.byToken[t.Value] = f.key
			f.recent = append([]string{t.Value}, f.recent...)
			if len(f.recent) > recentTokens+1 {
				for _, old := range f.recent[recentTokens+1:] {
					delete(ks.byToken, old)
				}
				f.recent = f.recent[:recentTokens+1]
			}
		}
		ks.mu.Unlock()
	}
	f.wake()
}

// wake tells the long polls on the key that it changed.
func (f *followed) wake() {
	f.mu.Lock()
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
	f.mu.Unlock()
}

// next returns the channel closed at the key's next change.
func (f *followed) next() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changed == nil {
		f.changed = make(chan struct{})
	}
	return f.changed
}

// get returns the key's followed, or nil when the agent holds no value.
func (ks *keySet) get(key string) *followed {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.held[key]
}

// ofToken returns the key whose token, current or recent, token is.
func (ks *keySet) ofToken(token string) (string, bool) {
	if token == "" {
		return "", false
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if key, ok := ks.byToken[token]; ok {
		return key, true
	}
	// A rotation not yet taken in by rotated.
	for key, f := range ks.held {
		if _, kind := kv.SplitKey(key); kind == kv.KindToken && f.sub.Token().Value == token {
			return key, true
		}
	}
	return "", false
}

// tokenKeys returns the access-token keys served, held or not yet, of
// WeCom or not.
func (ks *keySet) tokenKeys(wecom bool) []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var keys []string
	for key := range ks.wanted {
		_, kind := kv.SplitKey(key)
		_, _, isWeCom := kv.SplitWeComKey(key)
		if kind == kv.KindToken && isWeCom == wecom {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys
}

func (ks *keySet) ready() error {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.readyLocked()
}

func (ks *keySet) readyLocked() error {
	if !ks.listed {
		return fmt.Errorf("the keys of bucket %s are not listed yet", ks.a.cfg.Bucket)
	}
	if len(ks.wanted) == 0 {
		return fmt.Errorf("bucket %s has no keys yet (is the refresher running?)", ks.a.cfg.Bucket)
	}
	if len(ks.held) == len(ks.wanted) { // every key held is wanted: none is missing
		return nil
	}
	var missing []string
	for key := range ks.wanted {
		if ks.held[key] == nil {
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("no value yet for %s", strings.Join(missing, ", "))
	}
	return nil
}

func (ks *keySet) sortedLocked() []string {
	keys := make([]string, 0, len(ks.held))
	for key := range ks.held {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	return keys
}

// close closes the Set, once the goroutine starting it (which ends with
// the agent's context) has ended.
func (ks *keySet) close() {
	ks.mu.Lock()
	ks.closed = true
	ks.mu.Unlock()
	ks.followed.Wait()
	if set := ks.set.Load(); set != nil {
		set.Close()
	}
}

// waitNewer waits until the key holds a revision newer than revision, ctx
// ends or the agent drains, and returns the value then held.
func (f *followed) waitNewer(ctx context.Context, revision uint64, draining <-chan struct{}) subscriber.Token {
	for {
		// The channel is taken before the token is read: a rotation after
		// the read closes it.
		changed := f.next()
		if t := f.sub.Token(); t.Revision > revision {
			return t
		}
		if _, err := f.sub.Current(); errors.Is(err, subscriber.ErrRemoved) {
			return f.sub.Token() // the poll is answered: removed
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return f.sub.Token()
		case <-draining:
			return f.sub.Token()
		}
	}
}

// wants reports whether key is served, held or not yet.
func (ks *keySet) wants(key string) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.wanted[key]
}
