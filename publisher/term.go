package publisher

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"
	"github.com/wxtoken/wxtoken/internal/kvwatch"
	"github.com/wxtoken/wxtoken/publisher/internal/lease"
)

// term is one period of leadership and everything that runs during it.
type term struct {
	// ctx ends when the term ends, by shutdown or by losing the lease: no
	// new work starts after it.
	ctx context.Context
	// work bounds fetches and writes already under way. On shutdown it
	// outlives ctx until they are done, so a token WeChat already issued is
	// not thrown away; when the lease is lost it ends at once.
	work   context.Context
	bucket jetstream.KeyValue
	// lease is the term's lease: no fetch starts while it is in doubt, or
	// that could outlast it. Nil in tests that hold no lease.
	lease leadership

	onPanic func(any) // a goroutine's panic is logged, not fatal

	mu       sync.Mutex
	stopping bool
	wg       sync.WaitGroup
}

// spawn runs f in a goroutine the term waits for, unless the term is
// ending; it reports whether f runs.
func (t *term) spawn(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				t.onPanic(p)
			}
		}()
		f()
	}()
	return true
}

func (t *term) ending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopping
}

// drain stops new goroutines and waits for the running ones.
func (t *term) drain() {
	t.mu.Lock()
	t.stopping = true
	t.mu.Unlock()
	t.wg.Wait()
}

// coversCall reports whether the term's lease surely covers a call that
// may take d, once it is known to be held (see lease.Held.Covers); false
// if the term ends first.
func (t *term) coversCall(d time.Duration) bool {
	return t.lease == nil || t.lease.Covers(t.ctx, d)
}

// leadership is what a term needs of the lease: when it is gone, and
// whether it covers a call.
type leadership interface {
	Lost() <-chan struct{}
	Covers(ctx context.Context, d time.Duration) bool
}

// lead runs the leader's duties until ctx ends or the lease is lost: it
// serves the refresh endpoint and runs the schedule.
func (r *Refresher) lead(ctx context.Context, bucket jetstream.KeyValue, held leadership) error {
	tctx, endTerm := context.WithCancel(ctx)
	defer endTerm()
	work, endWork := context.WithCancel(context.WithoutCancel(ctx))
	defer endWork()
	led := make(chan struct{})
	defer close(led)
	go func() {
		// Watched until lead returns, the draining included: a lease lost
		// while fetches finish at shutdown still cuts them short.
		select {
		case <-held.Lost():
			// From here on this replica may not call WeChat: whatever
			// is under way is cut short now, before cleaning up.
			r.setLeading(false)
			endWork()
			endTerm()
		case <-led:
		}
	}()
	t := &term{ctx: tctx, work: work, bucket: bucket, onPanic: r.logPanic, lease: held}
	r.term.Store(t)
	defer r.term.Store(nil)
	// However the term ends, it ends whole: nothing it started outlives it.
	// Drain first: a flight that ends while the term drains sets its
	// app's timer again, and only a draining term refuses to. Timers left
	// by this term would hold back the next term's, which never replace
	// a timer set no later.
	defer func() {
		endTerm()
		t.drain()
		r.disarm()
		r.flushRefresh()
	}()
	r.catchUp(tctx)
	// What the bucket holds may never have been announced: the leader
	// before this one may have died between writing and announcing.
	for _, a := range r.credentialList() {
		r.announceStored(a)
	}
	t.spawn(func() { r.dropRevoked(t) })

	svc, err := r.serve(t)
	if err != nil {
		return err
	}
	cl := cronLogger{log: r.log, secrets: &r.secrets}
	c := cron.New(cron.WithLogger(cl), cron.WithChain(cron.Recover(cl), cron.SkipIfStillRunning(cl)))
	id := c.Schedule(r.schedule, cron.FuncJob(func() { r.check(t) }))
	c.Start()
	// The first check runs now, through the same wrappers as the scheduled
	// ones, rather than a period later.
	t.spawn(c.Entry(id).WrappedJob.Run)
	r.log.Info("leading: refreshing tokens", "credentials", len(r.credentialList()), "schedule", r.cfg.Schedule)

	<-tctx.Done()
	<-c.Stop().Done()
	r.stopEndpoint(ctx, svc)
	return nil
}

// Run runs the refresher until ctx ends. It waits for NATS, opens the
// buckets (retrying what may pass by itself, such as a cluster still
// forming; see Ready), and follows
// the token bucket for its whole life (standbys too, so that their metrics
// are live and a takeover starts from a complete view), then campaigns for
// the lease: as leader it refreshes and serves refresh requests, as standby
// it waits to take over. It returns nil after a clean stop, which releases
// the lease so that a standby takes over at once.
func (r *Refresher) Run(ctx context.Context) error {
	bucket, l, err := r.open(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: a clean stop
		}
		return err
	}
	followCtx, stopFollowing := context.WithCancel(ctx)
	followed, watched, platformsFollowed, tended := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	defer func() {
		stopFollowing()
		<-followed
		<-watched
		<-platformsFollowed
		<-tended
		r.background.Wait()
	}()
	// The authorizers are known before the token bucket is read, so that
	// the follower takes in their tokens with everyone else's.
	if !r.followPlatforms(followCtx, platformsFollowed) {
		close(tended)
		return nil
	}
	go func() {
		defer close(tended)
		r.tendPlatforms(followCtx)
	}()
	synced := r.life.nextSync()
	follower := &kvwatch.Follower{
		Bucket:  bucket,
		Key:     ">",
		Conn:    r.nc,
		OnEntry: r.observe,
		OnSynced: func() {
			r.synced.Store(true)
			r.life.followerSynced()
		},
		OnError: func(err error) { r.log.Warn("token bucket watch interrupted, resuming", "error", err) },
		Rewatch: r.life.rewatch,
	}
	go func() {
		defer close(followed)
		follower.Run(followCtx)
	}()
	go func() {
		defer close(watched)
		r.watchBucket(followCtx)
	}()
	select {
	case <-synced:
	case <-ctx.Done():
		return nil
	}

	r.campaigning.Store(true)
	defer r.campaigning.Store(false)
	for {
		held, err := r.campaign(ctx, l, bucket)
		if err != nil {
			return nil // ctx ended
		}
		r.setLeading(true)
		r.log.Info("became leader", "instance", r.cfg.Instance)
		err = r.lead(ctx, bucket, held)
		r.setLeading(false)
		held.Release()
		if err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// campaign waits until this replica holds the lease. Meanwhile it stores
// what the last term left only in memory (see leftover.go); once it leads,
// its rotations do.
func (r *Refresher) campaign(ctx context.Context, l *lease.Lease, bucket jetstream.KeyValue) (*lease.Held, error) {
	storing, stopStoring := context.WithCancel(ctx)
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		r.storeLeftovers(storing, bucket)
	}()
	defer func() {
		stopStoring()
		<-stored
	}()
	return l.Acquire(ctx)
}
