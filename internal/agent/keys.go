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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/subscriber"
)

// keySet holds a subscriber per key served, and knows which key a token
// value belongs to.
type keySet struct {
	a *Agent

	mu       sync.RWMutex
	wanted   map[string]bool      // every key being followed, held or not yet
	held     map[string]*followed // the keys with a value in memory
	byToken  map[string]string    // a token of ours, current or recent, -> its key
	listed   bool                 // every key of the bucket is wanted (or --keys were given)
	wasReady bool                 // as last logged
	closed   bool
	followed sync.WaitGroup // the goroutines starting subscribers
}

// followed is one key's subscriber, with what long polls wait on.
type followed struct {
	key string
	sub *subscriber.Subscriber

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when a new value is held
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

// start follows the configured keys, or discovers them.
func (ks *keySet) start(ctx context.Context) {
	if len(ks.a.cfg.Keys) > 0 {
		ks.mu.Lock()
		ks.listed = true
		ks.mu.Unlock()
		for _, key := range ks.a.cfg.Keys {
			ks.follow(ctx, key)
		}
		ks.followed.Add(1)
		go func() {
			defer ks.followed.Done()
			ks.warnMissing(ctx)
		}()
		return
	}
	ks.followed.Add(1)
	go func() {
		defer ks.followed.Done()
		ks.discover(ctx)
	}()
}

// discover follows every credential key in the bucket, and each new one
// the refresher announces.
func (ks *keySet) discover(ctx context.Context) {
	log := ks.a.log
	subjects := kv.Subjects{Prefix: ks.a.cfg.SubjectPrefix}
	// Subscribed before the keys are listed: no key announced in between
	// is missed.
	announced, err := ks.a.cfg.Conn.Subscribe(subjects.Rotated(">"), func(m *nats.Msg) {
		key := strings.TrimPrefix(m.Subject, subjects.Rotated(""))
		if kv.ValidateKey(key) == nil {
			ks.follow(ctx, key)
		}
	})
	if err != nil {
		log.Warn("cannot follow new keys as they are announced; restart the agent to serve them", "error", err)
	} else {
		defer announced.Unsubscribe()
	}
	js, err := jetstream.New(ks.a.cfg.Conn)
	if err != nil {
		log.Error("cannot use JetStream", "error", err)
		return
	}
	delay := 100 * time.Millisecond
	for {
		keys, err := ks.list(ctx, js)
		if err == nil {
			for _, key := range keys {
				ks.follow(ctx, key)
			}
			ks.mu.Lock()
			ks.listed = true
			ks.logReadyLocked()
			ks.mu.Unlock()
			log.Info("serving every key in the bucket", "bucket", ks.a.cfg.Bucket, "keys", strings.Join(keys, ","))
			break
		}
		log.Warn("cannot list the bucket's keys yet; retrying (or give --keys)", "bucket", ks.a.cfg.Bucket, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	<-ctx.Done()
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

// list returns the bucket's credential keys (not its force budgets).
func (ks *keySet) list(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := kv.Bind(ctx, js, ks.a.cfg.Bucket)
	if err != nil {
		return nil, err
	}
	all, err := b.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, key := range all {
		if kv.ValidateKey(key) == nil {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// follow starts following key, unless it is already.
func (ks *keySet) follow(ctx context.Context, key string) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.wanted[key] || ks.closed {
		return
	}
	ks.wanted[key] = true
	ks.wasReady = false // until this key is held too
	ks.followed.Add(1)
	go func() {
		defer ks.followed.Done()
		ks.subscribe(ctx, key)
	}()
}

// subscribe waits for key's first value and holds its subscriber.
func (ks *keySet) subscribe(ctx context.Context, key string) {
	f := &followed{key: key, changed: make(chan struct{})}
	cfg := ks.a.cfg
	opts := []subscriber.Option{
		subscriber.WithBucket(cfg.Bucket),
		subscriber.WithSubjectPrefix(cfg.SubjectPrefix),
		subscriber.WithLogger(ks.a.log),
		subscriber.OnRotate(func(_ *subscriber.Subscriber, t subscriber.Token) { ks.rotated(f, t) }),
		subscriber.OnError(func(_ *subscriber.Subscriber, err error) {
			if errors.Is(err, subscriber.ErrRemoved) {
				ks.a.log.Warn("key removed: it is answered 410 removed from now on", "key", key, "error", err)
				f.wake() // long polls answer it at once
			}
		}),
	}
	delay := time.Second
	for {
		sub, err := subscriber.New(ctx, cfg.Conn, key, opts...)
		if err == nil {
			f.sub = sub
			break
		}
		if ctx.Err() != nil {
			return
		}
		ks.a.log.Warn("cannot follow key; retrying", "key", key, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed {
		f.sub.Close()
		return
	}
	ks.held[key] = f // its token is known as ours by rotated, and by ofToken until then
	ks.a.log.Info("holding key", "key", key, "revision", f.sub.Token().Revision)
	ks.logReadyLocked()
}

// logReadyLocked logs the agent becoming ready. Callers hold ks.mu.
func (ks *keySet) logReadyLocked() {
	ready := ks.readyLocked() == nil
	if ready && !ks.wasReady {
		ks.a.log.Info("agent ready", "keys", strings.Join(ks.sortedLocked(), ","))
	}
	ks.wasReady = ready
}

// rotated takes in a key's new value: long polls are told, and a token is
// known as ours.
func (ks *keySet) rotated(f *followed, t subscriber.Token) {
	if _, kind := kv.SplitKey(f.key); kind == kv.KindToken {
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
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// get returns the key's subscriber, or nil when none holds a value.
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

// close closes every subscriber, once the goroutines starting them (which
// end with the agent's context) have ended.
func (ks *keySet) close() {
	ks.mu.Lock()
	ks.closed = true
	ks.mu.Unlock()
	ks.followed.Wait()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	for _, f := range ks.held {
		f.sub.Close()
	}
}

// waitNewer waits until the key holds a revision newer than revision, ctx
// ends or the agent drains, and returns the value then held.
func (f *followed) waitNewer(ctx context.Context, revision uint64, draining <-chan struct{}) subscriber.Token {
	for {
		// The channel is taken before the token is read: a rotation after
		// the read closes it.
		f.mu.Lock()
		changed := f.changed
		f.mu.Unlock()
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
