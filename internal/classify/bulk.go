package classify

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"moat.dev/moat/internal/message"
)

// lessonFeatures are one message's feature keys for a classifier (and
// its word model), extracted ahead of learning.
type lessonFeatures struct {
	keys, wkeys []uint64
	fp          [32]byte
}

// lessonFeatures extracts what Learn extracts from m. It only reads c's
// configuration: safe to call from many goroutines.
func (c *Classifier) lessonFeatures(m *message.Message) lessonFeatures {
	f := lessonFeatures{fp: m.Fingerprint}
	if c.words != nil {
		f.keys = c.featureKeys(m, len(stackKeys))
		f.wkeys = c.words.featureKeys(m, 0)
	} else {
		f.keys = c.featureKeys(m, 0)
	}
	return f
}

// featureKeys returns the keys of m's features, with room for extra
// more. Only the keys are kept: the features are extracted into a
// reused buffer (a few thousand per message, the bulk of what a message
// being learned would hold).
func (c *Classifier) featureKeys(m *message.Message, extra int) []uint64 {
	bp := featureBufs.Get().(*[]Feature)
	fs := extract(m, c.fs, false, (*bp)[:0])
	keys := c.keysExtra(fs, extra)
	*bp = fs
	featureBufs.Put(bp)
	return keys
}

var featureBufs = sync.Pool{New: func() any { return new([]Feature) }}

// learnFeatures is Learn with the features extracted already.
func (l *Learner) learnFeatures(ctx context.Context, user string, f lessonFeatures, label Label) (LearnOutcome, error) {
	out, err := l.c.learn(ctx, user, f.keys, f.wkeys, f.fp, label)
	if err != nil && l.ov != nil {
		l.ov = newOverlay(l.ov.base) // a lesson may be half learned: drop the batch
		l.c = l.direct.withStore(l.ov)
		l.todo = 0
	}
	if err != nil || l.ov == nil {
		return out, err
	}
	l.todo++
	if l.todo >= l.every {
		return out, l.Flush(ctx)
	}
	return out, nil
}

// BulkItem is one message for Learner.LearnStream: its raw bytes, the
// label to learn it with, and a name for reports and errors.
type BulkItem struct {
	Name  string
	Data  []byte
	Label Label
}

// StreamOptions tunes Learner.LearnStream; the zero value means the
// defaults.
type StreamOptions struct {
	// User is the model learned ("" = the site model).
	User string
	// Limits are the parser's (message.DefaultLimits when zero).
	Limits message.Limits
	// Workers parse messages and extract their features ahead of the
	// learning (default GOMAXPROCS).
	Workers int
	// Window bounds the messages read ahead of the one being learned
	// (default 64): their raw bytes or features are what is held.
	Window int
}

// LearnStream learns the messages that produce pushes, one lesson each,
// in the order they are pushed, exactly as Learn would one after the
// other: only the pure CPU work of each message (parsing, feature
// extraction) runs ahead, in opt.Workers goroutines and at most
// opt.Window messages ahead, while the lessons are learned in order on
// the calling goroutine. done, if not nil, is called after each lesson,
// in order, on the calling goroutine (the item's Data is nil by then).
//
// produce runs on its own goroutine; push blocks while the window is
// full and returns an error once LearnStream is stopping (produce should
// then return). The first error of a lesson (wrapped with the item's
// name), of done or of produce stops the stream and is returned. Lessons
// learned before it stay in the Learner: Flush writes them.
func (l *Learner) LearnStream(ctx context.Context, opt StreamOptions, produce func(push func(BulkItem) error) error, done func(BulkItem, LearnOutcome) error) error {
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0)
	}
	if opt.Window <= 0 {
		opt.Window = 64
	}
	if opt.Limits == (message.Limits{}) {
		opt.Limits = message.DefaultLimits()
	}
	type job struct {
		it    BulkItem
		f     lessonFeatures
		ok    bool // f was extracted (not when stopping)
		ready chan struct{}
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	order := make(chan *job, opt.Window) // in push order, to the learner
	work := make(chan *job, opt.Window)  // to the workers
	var prodErr error
	prodDone := make(chan struct{})
	errStopped := errors.New("classify: LearnStream stopped")
	go func() {
		defer close(prodDone)
		defer close(work)
		defer close(order)
		prodErr = produce(func(it BulkItem) error {
			if ctx.Err() != nil {
				return errStopped
			}
			j := &job{it: it, ready: make(chan struct{})}
			select {
			case order <- j:
			case <-ctx.Done():
				return errStopped
			}
			select {
			case work <- j:
			case <-ctx.Done():
				return errStopped
			}
			return nil
		})
	}()
	x := l.direct // only its configuration is read
	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				if ctx.Err() == nil {
					j.f = x.lessonFeatures(message.ParseBytes(j.it.Data, opt.Limits))
					j.ok = true
				}
				j.it.Data = nil
				close(j.ready)
			}
		}()
	}
	err := func() error {
		for j := range order {
			// ctx ends here only with parent: the cancel below comes later.
			select {
			case <-j.ready:
				if !j.ok {
					return parent.Err()
				}
			case <-ctx.Done():
				return parent.Err()
			}
			out, err := l.learnFeatures(ctx, opt.User, j.f, j.it.Label)
			if err != nil {
				return fmt.Errorf("%s: %w", j.it.Name, err)
			}
			if done != nil {
				if err := done(j.it, out); err != nil {
					return err
				}
			}
		}
		return nil
	}()
	cancel()
	for range order { // let a blocked push see the cancel
	}
	<-prodDone
	wg.Wait()
	if err != nil {
		return err
	}
	if prodErr != nil && !errors.Is(prodErr, errStopped) {
		return prodErr
	}
	return parent.Err()
}
