package bayes

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

// Autolearn is the classifier learning from the mail flow by itself, as
// SpamAssassin's bayes_auto_learn does: a message whose score from every
// *other* layer is very high is a spam lesson, one whose score is at or
// below zero-ish is a ham lesson. Lessons go to the site model only
// (people's corrections teach their own models) and are recorded by the
// message's fingerprint, so a later correction (quarantine release,
// "report spam") moves the lesson instead of counting the message twice.
//
// It never learns from a transaction whose evidence is incomplete or not
// about content: a check that failed, a hard verdict (virus, unknown
// recipient), GTUBE, allow/block list entries, authenticated
// submission, or a message over 512 KiB. And it does not teach the classifier against its own
// confident opinion (no ham lesson at BAYES_80 or above, no spam lesson
// at BAYES_20 or below): those are exactly the messages where the other
// layers are least reliable, and where a person should decide.
type Autolearn struct {
	// Enabled turns autolearn on (default true).
	Enabled bool `yaml:"enabled"`
	// HamMax: a score (without the classifier's points) at or below this
	// is a ham lesson. Default 0.1, SpamAssassin's.
	HamMax float64 `yaml:"ham_max"`
	// SpamMin: a score (without the classifier's points) at or above this
	// is a spam lesson. Default 12, SpamAssassin's.
	SpamMin float64 `yaml:"spam_min"`
	// Queue bounds the lessons waiting for the learner; beyond it lessons
	// are dropped (counted), never delaying the SMTP reply. Default 64.
	Queue int `yaml:"queue"`
	// MaxRate: lessons per second at most (bursts of up to 4 seconds'
	// worth); beyond it lessons are skipped (counted). Default 5.
	MaxRate float64 `yaml:"max_rate"`
}

// DefaultAutolearn returns the defaults.
func DefaultAutolearn() Autolearn {
	return Autolearn{Enabled: true, HamMax: 0.1, SpamMin: 12, Queue: 64, MaxRate: 5}
}

func (a *Autolearn) validate() error {
	if !a.Enabled {
		return nil
	}
	if a.SpamMin <= a.HamMax {
		return errors.New("autolearn.spam_min: must be above autolearn.ham_max")
	}
	if a.Queue < 1 || a.Queue > 100000 {
		return errors.New("autolearn.queue: must be between 1 and 100000")
	}
	if a.MaxRate <= 0 || a.MaxRate > 10000 {
		return errors.New("autolearn.max_rate: must be above 0 and at most 10000 lessons per second")
	}
	return nil
}

// maxLessonSize bounds the messages autolearn takes (SpamAssassin's spamc
// skips messages over 500 KB for the same reason).
const maxLessonSize = 512 << 10

// Opinion is the classifier's say on a message, for AutolearnLabel.
type Opinion struct {
	Spoke bool    // false while the model is silent (untrained)
	Prob  float64 // spam probability when Spoke
}

// AutolearnLabel decides the lesson for a message scored other (points
// from every layer but the classifier), with the classifier's opinion op.
// Unknown means no lesson. moat eval --autolearn uses the same rule.
func AutolearnLabel(a Autolearn, other float64, op Opinion) classify.Label {
	if !a.Enabled {
		return classify.Unknown
	}
	switch {
	case other >= a.SpamMin && (!op.Spoke || op.Prob > 0.2 && op.Prob < 0.99):
		return classify.Spam
	case other <= a.HamMax && (!op.Spoke || op.Prob >= 0.1 && op.Prob < 0.8):
		return classify.Ham
	}
	return classify.Unknown
}

// lesson is one queued autolearn lesson.
type lesson struct {
	m     *message.Message
	label classify.Label
	log   func(msg string, args ...any)
}

// autolearner owns the queue and the one goroutine that learns from it.
type autolearner struct {
	log   func(msg string, args ...any)
	c     *classify.Classifier
	rate  *rateLimiter
	q     chan lesson
	done  chan struct{}
	once  sync.Once
	count *prometheus.CounterVec
}

func newAutolearner(c *classify.Classifier, cfg Autolearn, count *prometheus.CounterVec, log *slog.Logger) *autolearner {
	a := &autolearner{log: log.Error, c: c, rate: newRateLimiter(cfg.MaxRate, 4*cfg.MaxRate), q: make(chan lesson, cfg.Queue), done: make(chan struct{}), count: count}
	go a.run()
	return a
}

// Lessons are learned in batches (classify.Learner). A lesson updates a
// couple of thousand rows scattered over the model, so a transaction per
// lesson rewrites thousands of database pages for one message; a batch
// shares them. A batch is written when it holds batchSize lessons, when
// no lesson has come for flushAfter, and at close. A crash loses at most
// the batch: autolearn is best effort, the mail itself is not affected.
const (
	batchSize  = 32
	flushAfter = 2 * time.Second
)

func (a *autolearner) run() {
	defer close(a.done)
	ln := a.c.NewLearner(1 << 30) // flushed here, not by count
	var pending [3]int            // lessons in the batch, by label
	flush := func() {
		if pending[classify.Ham]+pending[classify.Spam] == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := ln.Flush(ctx)
		cancel()
		result := "learned"
		if err != nil {
			result = "error"
			a.log("autolearn: writing a batch failed", "lessons", pending[classify.Ham]+pending[classify.Spam], "err", err)
		}
		for _, l := range []classify.Label{classify.Ham, classify.Spam} {
			a.count.WithLabelValues(l.String(), result).Add(float64(pending[l]))
		}
		pending = [3]int{}
	}
	idle := time.NewTimer(flushAfter)
	idle.Stop()
	for {
		select {
		case l, ok := <-a.q:
			if !ok {
				flush()
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := ln.Learn(ctx, "", l.m, l.label)
			cancel()
			switch {
			case err != nil:
				// The Learner dropped its batch: those lessons are lost.
				pending[l.label]++
				for _, lb := range []classify.Label{classify.Ham, classify.Spam} {
					a.count.WithLabelValues(lb.String(), "error").Add(float64(pending[lb]))
				}
				pending = [3]int{}
				l.log("autolearn failed", "label", l.label.String(), "err", err)
			case out == classify.AlreadyKnown:
				a.count.WithLabelValues(l.label.String(), "known").Inc()
			default:
				pending[l.label]++
				l.log("autolearned", "label", l.label.String(), "outcome", out.String())
			}
			if pending[classify.Ham]+pending[classify.Spam] >= batchSize {
				flush()
			}
			idle.Reset(flushAfter)
		case <-idle.C:
			flush()
		}
	}
}

// offer queues a lesson without waiting; false when over the rate or the
// queue is full.
func (a *autolearner) offer(l lesson) bool {
	if a.rate != nil && !a.rate.allow(time.Now()) {
		a.count.WithLabelValues(l.label.String(), "rate").Inc()
		return false
	}
	select {
	case a.q <- l:
		return true
	default:
		a.count.WithLabelValues(l.label.String(), "dropped").Inc()
		return false
	}
}

// close stops taking lessons and waits for the queued ones to be learned.
func (a *autolearner) close() {
	a.once.Do(func() { close(a.q) })
	<-a.done
}

var _ pipeline.DataObserver = (*Check)(nil)

// Decided implements pipeline.DataObserver: it picks the autolearn lesson
// of a decided message, queues it, and returns what X-Spam-Status reports
// ("ham", "spam" or "no").
func (c *Check) Decided(_ context.Context, tx *pipeline.Txn, pm *pipeline.Message, results []verdict.Result, dec policy.Decision) string {
	if c.auto == nil || tx == nil || pm == nil {
		return "no"
	}
	if dec.Action == verdict.TempFail || dec.Action == verdict.Drop || tx.Conn == nil || tx.Conn.AuthUser != "" {
		return "no"
	}
	if pm.Size > maxLessonSize {
		return "no" // a queued lesson holds the parsed message in memory
	}
	op := Opinion{}
	for _, res := range results {
		if res.Err != nil || res.Hard != nil {
			return "no"
		}
		for _, s := range res.Symbols {
			if s.Name == "GTUBE" || strings.HasPrefix(s.Name, "ALLOWLIST_") || strings.HasPrefix(s.Name, "BLOCKLIST_") {
				return "no"
			}
		}
	}
	other := dec.Score
	for _, s := range dec.Counted {
		if strings.HasPrefix(s.Name, "BAYES_") {
			other -= s.Score
			op = Opinion{Spoke: true, Prob: probOf(s)}
		}
	}
	label := AutolearnLabel(c.cfg.Autolearn, other, op)
	if label == classify.Unknown {
		return "no"
	}
	m, err := shared.Parse(pm, c.lim)
	if err != nil {
		return "no"
	}
	log := func(msg string, args ...any) {
		if tx.Log != nil {
			tx.Log.Info(msg, args...)
		}
	}
	if !c.auto.offer(lesson{m: m, label: label, log: log}) {
		return "no"
	}
	return label.String()
}

// probOf reads the probability the check wrote into its symbol's detail
// ("p=0.9731 ..."); without one it takes the middle of the bucket's range.
func probOf(s verdict.Symbol) float64 {
	if d, ok := strings.CutPrefix(s.Detail, "p="); ok {
		if i := strings.IndexByte(d, ' '); i >= 0 {
			d = d[:i]
		}
		if p, err := strconv.ParseFloat(d, 64); err == nil {
			return p
		}
	}
	for i, b := range buckets {
		if b.name == s.Name {
			hi := 1.0
			if i > 0 {
				hi = buckets[i-1].min
			}
			return (b.min + hi) / 2
		}
	}
	return 0.5
}

// rateLimiter is a token bucket.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newRateLimiter(rate, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: max(burst, 1), tokens: max(burst, 1)}
}

func (r *rateLimiter) allow(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() {
		r.tokens = min(r.burst, r.tokens+now.Sub(r.last).Seconds()*r.rate)
	}
	r.last = now
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
