package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"moat.dev/moat/internal/verdict"
)

// job is the delivery of one message's pending recipients in one domain.
// Fields are guarded by Queue.mu.
type job struct {
	e       *entry
	domain  string
	next    time.Time
	index   int // in Queue.heap; -1 when not there
	running bool
	parked  bool
}

type jobHeap []*job

func (h jobHeap) Len() int { return len(h) }
func (h jobHeap) Less(i, j int) bool {
	if !h[i].next.Equal(h[j].next) {
		return h[i].next.Before(h[j].next)
	}
	return h[i].e.env.ID < h[j].e.env.ID
}
func (h jobHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *jobHeap) Push(x any) {
	j := x.(*job)
	j.index = len(*h)
	*h = append(*h, j)
}
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	j.index = -1
	return j
}

// signal wakes the dispatcher.
func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// add registers a committed message and starts its delivery at once when
// a worker is free (no hand-off to the dispatcher goroutine: that wake-up
// cost as much as a system call per message); otherwise the dispatcher is
// woken to take it when it can.
func (q *Queue) add(env *Envelope, dir string, hasEnv bool) {
	q.mu.Lock()
	if _, dup := q.msgs[env.ID]; dup {
		q.mu.Unlock()
		q.log.Error("queue: duplicate queue id, second copy ignored", "queue_id", env.ID, "dir", dir)
		return
	}
	e := &entry{env: env, dir: dir, jobs: make(map[string]*job), hasEnv: hasEnv}
	q.msgs[env.ID] = e
	q.scheduleLocked(e)
	if q.running {
		q.dispatchLocked(q.now())
	}
	wake := !q.running || len(q.heap) > 0
	q.mu.Unlock()
	if wake {
		q.signal()
	}
}

// scheduleLocked makes sure every domain with pending recipients has a job
// at the right time (unless the message is held or gone).
func (q *Queue) scheduleLocked(e *entry) {
	domains := map[string]bool{}
	for _, r := range e.env.Rcpts {
		if r.Status == StatusPending {
			domains[r.Domain] = true
		}
	}
	for d := range domains {
		j := e.jobs[d]
		if j == nil {
			j = &job{e: e, domain: d, index: -1}
			e.jobs[d] = j
		}
		q.rescheduleLocked(j)
	}
}

// rescheduleLocked puts j in the heap at the earliest Next of its pending
// recipients, or drops it when there are none.
func (q *Queue) rescheduleLocked(j *job) {
	e := j.e
	var next time.Time
	n := 0
	for _, r := range e.env.Rcpts {
		if r.Status == StatusPending && r.Domain == j.domain {
			if n == 0 || r.Next.Before(next) {
				next = r.Next
			}
			n++
		}
	}
	if n == 0 || e.gone || e.dir == dirHold {
		if j.index >= 0 {
			heap.Remove(&q.heap, j.index)
		}
		if n == 0 && e.jobs[j.domain] == j {
			delete(e.jobs, j.domain)
		}
		return
	}
	if j.running || j.parked {
		return // finish or unpark reschedules
	}
	j.next = next
	if j.index >= 0 {
		heap.Fix(&q.heap, j.index)
	} else {
		heap.Push(&q.heap, j)
	}
}

// unscheduleLocked takes all of e's jobs out of the heap.
func (q *Queue) unscheduleLocked(e *entry) {
	for _, j := range e.jobs {
		if j.index >= 0 {
			heap.Remove(&q.heap, j.index)
		}
	}
}

// Run delivers until ctx is cancelled, then waits for in-flight deliveries
// up to shutdown_grace before cancelling them. It also serves `moat queue`
// requests from the control directory. Call it once.
func (q *Queue) Run(ctx context.Context) error {
	if q.d == nil {
		return errors.New("queue: Run without a Deliverer")
	}
	q.mu.Lock()
	if q.running || q.closed.Load() {
		q.mu.Unlock()
		return errors.New("queue: Run called twice or after Close")
	}
	q.running = true
	q.mu.Unlock()
	q.log.Info("queue: running", "spool_dir", q.cfg.SpoolDir, "messages", q.stats().messages)

	ctl := time.NewTicker(q.ctlInterval)
	defer ctl.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		wait := q.dispatchLocked(q.now())
		q.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return q.shutdown()
		case <-q.wake:
		case <-timer.C:
		case <-ctl.C:
			q.pollControl()
			q.retryOwed(q.now())
		}
	}
}

func (q *Queue) shutdown() error {
	q.mu.Lock()
	q.running = false
	n := q.active
	q.mu.Unlock()
	done := make(chan struct{})
	go func() { q.inflight.Wait(); close(done) }()
	if n > 0 {
		q.log.Info("queue: waiting for deliveries in flight", "count", n)
	}
	select {
	case <-done:
		return nil
	case <-time.After(q.cfg.ShutdownGrace.D()):
	}
	q.log.Warn("queue: shutdown grace over, cancelling deliveries")
	q.dcancel()
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("queue: deliveries did not stop after cancellation")
	}
}

// dispatchLocked starts every due job the limits allow and returns how long
// to sleep before the next one is due.
func (q *Queue) dispatchLocked(now time.Time) time.Duration {
	const idle = time.Minute
	for len(q.heap) > 0 {
		j := q.heap[0]
		if j.next.After(now) {
			return min(j.next.Sub(now), idle)
		}
		if q.active >= q.cfg.Workers {
			return idle // a finishing delivery wakes us
		}
		heap.Pop(&q.heap)
		if q.domActive[j.domain] >= q.cfg.PerDomain {
			j.parked = true
			q.parked[j.domain] = append(q.parked[j.domain], j)
			continue
		}
		q.startLocked(j)
	}
	return idle
}

func (q *Queue) startLocked(j *job) {
	e := j.e
	var rcpts []string
	for _, r := range e.env.Rcpts {
		if r.Status == StatusPending && r.Domain == j.domain {
			rcpts = append(rcpts, r.Addr)
		}
	}
	if len(rcpts) == 0 {
		delete(e.jobs, j.domain)
		return
	}
	j.running = true
	e.running++
	q.active++
	q.domActive[j.domain]++
	id, dir, size := e.env.ID, e.dir, e.env.Size
	d := &Delivery{
		Env:    cloneEnv(e.env),
		Domain: j.domain,
		Rcpts:  rcpts,
		Open: func() (io.ReadCloser, error) {
			f, err := q.openAt(dir, id+".eml", os.O_RDONLY, 0)
			if err != nil {
				return nil, err
			}
			return bodyReader(f, size), nil
		},
	}
	q.inflight.Add(1)
	go q.deliver(j, d)
}

// unparkLocked returns the oldest job waiting for a slot in domain to the
// heap: one delivery of domain finished, so one slot is free. Returning
// them all made every finished delivery cost O(parked) heap operations,
// quadratic over a backlog (a customer's server coming back to thousands
// of queued messages). Jobs parked for messages since deleted, held or
// finished are dropped on the way.
func (q *Queue) unparkLocked(domain string) {
	js := q.parked[domain]
	for len(js) > 0 {
		j := js[0]
		js[0] = nil
		js = js[1:]
		j.parked = false
		if j.e.jobs[j.domain] != j {
			continue
		}
		q.rescheduleLocked(j)
		if j.index >= 0 {
			break
		}
	}
	if len(js) == 0 {
		delete(q.parked, domain)
	} else {
		q.parked[domain] = js
	}
}

func (q *Queue) deliver(j *job, d *Delivery) {
	defer q.inflight.Done()
	var results []Result
	func() {
		defer func() {
			if p := recover(); p != nil {
				q.log.Error("queue: deliverer panicked", "queue_id", d.Env.ID, "domain", d.Domain, "panic", fmt.Sprint(p))
				results = nil
			}
		}()
		results = q.d.Deliver(q.dctx, d)
	}()
	q.finish(j, d, results)
}

var replyNoResult = verdict.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "delivery attempt gave no result"}

// finish applies the results of one attempt, sends DSNs and persists.
func (q *Queue) finish(j *job, d *Delivery, results []Result) {
	e := j.e
	e.pmu.Lock()
	defer e.pmu.Unlock()
	now := q.now()
	log := q.log.With("queue_id", d.Env.ID, "domain", d.Domain)

	q.mu.Lock()
	j.running = false
	e.running--
	q.active--
	if q.domActive[j.domain]--; q.domActive[j.domain] <= 0 {
		delete(q.domActive, j.domain)
	}
	q.unparkLocked(j.domain)
	if e.gone || q.dctx.Err() != nil {
		// Deleted meanwhile, or cancelled by shutdown: the attempt
		// does not count and nothing is written.
		q.rescheduleLocked(j)
		q.mu.Unlock()
		q.signal()
		return
	}

	byAddr := make(map[string]Result, len(results))
	for _, r := range results {
		byAddr[strings.ToLower(r.Rcpt)] = r
	}
	asked := make(map[string]bool, len(d.Rcpts))
	for _, a := range d.Rcpts {
		asked[a] = true
	}
	env := e.env
	for i := range env.Rcpts {
		r := &env.Rcpts[i]
		if r.Domain != j.domain || r.Status != StatusPending || !asked[r.Addr] {
			continue
		}
		res, ok := byAddr[strings.ToLower(r.Addr)]
		if !ok {
			res = Result{Rcpt: r.Addr, Reply: replyNoResult}
		}
		r.Attempts++
		r.LastAttempt = now
		r.LastReply = sanitizeLine(res.Reply.String())
		r.Host = sanitizeLine(res.Host)
		var outcome string
		switch {
		case res.Reply.Code >= 200 && res.Reply.Code < 300:
			r.Status, r.Next, r.DSNStatus = StatusDelivered, time.Time{}, ""
			outcome = "delivered"
		case res.Permanent || res.Reply.Code >= 500:
			r.Status, r.Next, r.DSNStatus = StatusFailed, time.Time{}, dsnStatus(res.Reply, 5)
			outcome = "failed"
		default:
			expiry := env.Received.Add(q.cfg.MaxLifetime.D())
			r.DSNStatus = dsnStatus(res.Reply, 4)
			if !now.Before(expiry) {
				r.Status, r.Next, r.Expired, r.DSNStatus = StatusFailed, time.Time{}, true, "4.4.7"
				outcome = "expired"
			} else {
				r.Next = now.Add(q.backoff(r.Attempts))
				if r.Next.After(expiry) {
					r.Next = expiry
				}
				outcome = "deferred"
			}
		}
		q.m.deliveries.WithLabelValues(outcome).Inc()
		lvl := slogLevel(outcome)
		log.Log(context.Background(), lvl, "queue: "+outcome, "rcpt", r.Addr, "reply", r.LastReply,
			"host", r.Host, "attempts", r.Attempts, "next", r.Next)
	}

	canDSN := env.From != "" && !env.IsDSN
	var failed, delayed []RcptState
	if e.running == 0 && canDSN {
		// One DSN for all failures of the attempts that ran together.
		for i := range env.Rcpts {
			r := &env.Rcpts[i]
			if r.Status == StatusFailed && !r.Notified {
				r.Notified = true
				failed = append(failed, *r)
			}
		}
	}
	pending := pendingCount(env)
	if pending > 0 && canDSN && !env.DelayWarned && q.cfg.DelayWarning > 0 &&
		now.Sub(env.Received) >= q.cfg.DelayWarning.D() {
		env.DelayWarned = true
		for _, r := range env.Rcpts {
			if r.Status == StatusPending {
				delayed = append(delayed, r)
			}
		}
	}
	done := pending == 0 && e.running == 0
	if done {
		e.gone = true // stays listed until its files are gone
	}
	q.rescheduleLocked(j)
	snap, dir := cloneEnv(env), e.dir
	q.mu.Unlock()

	var dsnErr error
	if len(failed) > 0 {
		dsnErr = q.sendDSN(snap, dir, failed, dsnFailed, now)
	}
	if len(delayed) > 0 {
		if err := q.sendDSN(snap, dir, delayed, dsnDelayed, now); err != nil {
			dsnErr = err
		}
	}
	if dsnErr != nil {
		log.Error("queue: cannot queue DSN", "err", dsnErr)
		if !done || len(failed) > 0 {
			// Try again after the next attempt (or, when nothing else is
			// left to deliver, from Run's retry of owed DSNs).
			q.mu.Lock()
			for i := range env.Rcpts {
				for _, f := range failed {
					if env.Rcpts[i].Addr == f.Addr {
						env.Rcpts[i].Notified = false
					}
				}
			}
			if len(delayed) > 0 {
				env.DelayWarned = false
			}
			snap = cloneEnv(env)
			q.mu.Unlock()
		}
	}
	if done && owesDSN(snap) {
		// The sender must hear of the failure: the files stay (with the
		// envelope saying who is owed what) until the DSN is queued.
		if err := q.persist(e, snap, dir); err != nil {
			log.Error("queue: cannot persist envelope of a message owing a DSN", "err", err)
		}
		q.mu.Lock()
		delete(q.msgs, snap.ID)
		q.owed[snap.ID] = &owedDSN{env: snap, dir: dir, hasEnv: e.hasEnv, next: now.Add(owedRetry)}
		q.mu.Unlock()
	} else if done {
		if err := q.removeFiles(snap.ID, dir, e.hasEnv); err != nil {
			log.Error("queue: cannot remove finished message", "err", err)
		} else {
			log.Info("queue: message done")
		}
		q.mu.Lock()
		delete(q.msgs, snap.ID)
		q.mu.Unlock()
	} else if err := q.persist(e, snap, dir); err != nil {
		log.Error("queue: cannot persist envelope; state since the last write will be retried", "err", err)
	}
	// Wake the dispatcher only when there is something for it: a job
	// waiting for the slot this attempt freed, or a retry to time.
	q.mu.Lock()
	wake := len(q.heap) > 0
	q.mu.Unlock()
	if wake {
		q.signal()
	}
}

// retryOwed queues the failure DSNs finished messages still owe (their
// first try failed, e.g. on a full disk), then removes those messages.
func (q *Queue) retryOwed(now time.Time) {
	q.mu.Lock()
	var due []string
	for id, o := range q.owed {
		if !now.Before(o.next) {
			due = append(due, id)
		}
	}
	q.mu.Unlock()
	for _, id := range due {
		q.mu.Lock()
		o := q.owed[id]
		q.mu.Unlock()
		var failed []RcptState
		for _, r := range o.env.Rcpts {
			if r.Status == StatusFailed && !r.Notified {
				failed = append(failed, r)
			}
		}
		log := q.log.With("queue_id", id)
		if err := q.sendDSN(o.env, o.dir, failed, dsnFailed, now); err != nil {
			log.Error("queue: cannot queue owed DSN; will retry", "err", err, "retry_in", owedRetry)
			q.mu.Lock()
			o.next = now.Add(owedRetry)
			q.mu.Unlock()
			continue
		}
		if err := q.removeFiles(id, o.dir, o.hasEnv); err != nil {
			log.Error("queue: cannot remove finished message", "err", err)
		} else {
			log.Info("queue: message done")
		}
		q.mu.Lock()
		delete(q.owed, id)
		q.mu.Unlock()
	}
}

// backoff returns the wait after the n-th consecutive temporary failure.
func (q *Queue) backoff(n int) time.Duration {
	d, maxd := q.cfg.MinBackoff.D(), q.cfg.MaxBackoff.D()
	for i := 1; i < n && d < maxd; i++ {
		d *= 2
	}
	d = min(d, maxd)
	if j := q.cfg.Jitter; j > 0 {
		d = time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
	}
	return min(d, maxd)
}

// dsnStatus gives the RFC 3463 status of a reply, forcing its class.
func dsnStatus(r verdict.Reply, class int) string {
	e := r.Enhanced
	if e[0] != 2 && e[0] != 4 && e[0] != 5 || e[1] < 0 || e[1] > 999 || e[2] < 0 || e[2] > 999 {
		e = [3]int{class, 0, 0}
	}
	return fmt.Sprintf("%d.%d.%d", class, e[1], e[2])
}

// sanitizeLine keeps remote text safe for env files, logs and DSN fields:
// printable ASCII only.
func sanitizeLine(s string) string {
	if len(s) > 500 {
		s = s[:500]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return ' '
		}
		return r
	}, s)
}

func slogLevel(outcome string) slog.Level {
	switch outcome {
	case "failed", "expired":
		return slog.LevelWarn
	}
	return slog.LevelInfo
}
