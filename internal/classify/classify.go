// Package classify is Moat's self-learning statistical spam classifier.
//
// Three methods are implemented over the same feature extractor and store:
//
//   - "stack" (default): the two below, combined by a tiny online logistic
//     regression trained on each lesson's scores before learning it (an
//     online Platt calibration; see stack.go).
//   - "logreg": online logistic regression over hashed sparse
//     binary features (character 4-grams, header tokens, URL and structure
//     features), hashed into 2^hash_bits buckets, trained by stochastic
//     gradient descent on every message (or train-on-error with a margin).
//   - "chi2": Robinson/Fisher chi-square combining over word tokens, the
//     method of SpamBayes and bogofilter.
//
// docs/classifier.md has the measured comparison. Models live in a
// TokenStore (memory or SQLite), one per scope: the site ("global") and,
// once they have enough lessons, each user.
package classify

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"

	"moat.dev/moat/internal/message"
)

// Config is the classifier's configuration.
type Config struct {
	// Algorithm is "stack" (default: logreg and chi2 combined by an online,
	// calibrated stacker), "logreg" (online logistic regression over
	// character 4-grams) or "chi2" (Robinson/Fisher chi-square over words,
	// bogofilter-like).
	Algorithm string `yaml:"algorithm"`
	// MinHam and MinSpam: the classifier stays silent (no score) until the
	// model has learned at least this many ham and spam messages.
	MinHam  int `yaml:"min_ham"`
	MinSpam int `yaml:"min_spam"`
	// MinUserTrain: a user's personal model is used only once it has learned
	// this many messages in total; until then the global model answers.
	MinUserTrain int `yaml:"min_user_train"`
	// HashBits: logreg hashes features into 2^hash_bits weights (20..24).
	HashBits int `yaml:"hash_bits"`
	// LearningRate of logreg's gradient step (AdaGrad: the first step of
	// a feature; later steps shrink as its squared gradients add up).
	LearningRate float64 `yaml:"learning_rate"`
	// Adaptive: per-feature AdaGrad learning rates (default true); false is
	// plain SGD with a constant rate.
	Adaptive bool `yaml:"adaptive"`
	// Features: which feature families logreg uses: "grams" (character
	// 4-grams of the first 3000 bytes of header + decoded text, plus
	// sender, reply-path and relay domains, media type, mailer, URL,
	// attachment, MIME-defect and hidden-text features; default), "words"
	// (word tokens and OSB pairs), or "grams+words".
	Features string `yaml:"features"`
	// TrainMode is "everything" (learn every lesson) or "on-error" (learn a
	// lesson only when the model got it wrong or was unsure: TONE).
	TrainMode string `yaml:"train_mode"`
	// Threshold: a message whose spam probability is >= threshold counts as
	// spam for the FP/FN figures of moat eval and the verdict of moat
	// classify. The default, TagProb (0.95), is where the bayes check alone
	// reaches the default tag score (5 points, BAYES_99).
	Threshold float64 `yaml:"threshold"`
	// MaxWords: body words considered per message.
	MaxWords int `yaml:"max_words"`
}

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{
		Algorithm:    "stack",
		MinHam:       20,
		MinSpam:      20,
		MinUserTrain: 200,
		HashBits:     22,
		LearningRate: 0.3,
		Adaptive:     true,
		Features:     "grams",
		TrainMode:    "everything",
		Threshold:    TagProb,
		MaxWords:     3000,
	}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	switch c.Algorithm {
	case "stack", "logreg", "chi2":
	default:
		return fmt.Errorf("algorithm: %q is not one of stack, logreg, chi2", c.Algorithm)
	}
	if c.MinHam < 0 {
		return errors.New("min_ham: must be >= 0")
	}
	if c.MinSpam < 0 {
		return errors.New("min_spam: must be >= 0")
	}
	if c.MinUserTrain < 0 {
		return errors.New("min_user_train: must be >= 0")
	}
	if c.HashBits < 16 || c.HashBits > 26 {
		return errors.New("hash_bits: must be between 16 and 26")
	}
	if !(c.LearningRate > 0 && c.LearningRate <= 100) {
		return errors.New("learning_rate: must be > 0 and <= 100")
	}
	switch c.Features {
	case "grams", "words", "grams+words":
	default:
		return fmt.Errorf("features: %q is not one of grams, words, grams+words", c.Features)
	}
	if c.TrainMode != "everything" && c.TrainMode != "on-error" {
		return fmt.Errorf("train_mode: %q is not one of everything, on-error", c.TrainMode)
	}
	if !(c.Threshold > 0 && c.Threshold < 1) {
		return errors.New("threshold: must be between 0 and 1")
	}
	if c.MaxWords < 10 {
		return errors.New("max_words: must be >= 10")
	}
	return nil
}

// Classifier scores and learns messages against a TokenStore.
type Classifier struct {
	cfg   Config
	store TokenStore
	alg   algorithm
	fs    FeatureSet
	words *Classifier // stack: the word-count (chi2) model; nil otherwise
}

// New returns a classifier over store.
func New(cfg Config, store TokenStore) (*Classifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Classifier{cfg: cfg, store: store}
	switch cfg.Algorithm {
	case "chi2":
		c.alg = newChi2()
	default:
		var fs FeatureSet
		if strings.Contains(cfg.Features, "grams") {
			fs.Grams = 3000
			fs.Headers = true
		}
		if strings.Contains(cfg.Features, "words") {
			fs.Words, fs.Pairs, fs.Markup = true, true, true
		}
		c.alg = newLogreg(cfg.HashBits, cfg.LearningRate, cfg.Adaptive, fs)
	}
	c.fs = c.alg.featureSet()
	c.fs.MaxWords = cfg.MaxWords
	if cfg.Algorithm == "stack" {
		wc := cfg
		wc.Algorithm = "chi2"
		w, err := New(wc, store)
		if err != nil {
			return nil, err
		}
		c.words = w
	}
	return c, nil
}

// Config returns the configuration in use.
func (c *Classifier) Config() Config { return c.cfg }

// Scope returns the store scope of user's model ("" = the global model).
func (c *Classifier) Scope(user string) string {
	if user == "" {
		return c.alg.name() + ":global"
	}
	return c.alg.name() + ":user:" + strings.ToLower(user)
}

// Contribution is one feature's push toward spam (positive) or ham.
type Contribution struct {
	Feature string
	Value   float64
}

// Result is one classification.
type Result struct {
	Prob    float64 // P(spam), 0.5 when the model is empty
	Trained bool    // the model has at least min_ham and min_spam lessons
	Scope   string  // the model that answered
	Ham     int64   // lessons in that model
	Spam    int64
	Top     []Contribution // strongest features, when explaining
}

// Spam reports whether the result is at or above the threshold.
func (c *Classifier) Spam(r Result) bool { return r.Prob >= c.cfg.Threshold }

// Features extracts the features this classifier uses.
func (c *Classifier) Features(m *message.Message, names bool) []Feature {
	return Extract(m, c.fs, names)
}

func (c *Classifier) keys(fs []Feature) []uint64 { return c.keysExtra(fs, 0) }

// keysExtra is keys with room for extra more keys.
func (c *Classifier) keysExtra(fs []Feature, extra int) []uint64 {
	k := make([]uint64, len(fs), len(fs)+extra)
	for i, f := range fs {
		k[i] = c.alg.key(f.Hash)
	}
	return k
}

// pickScope returns the user's scope when it is trained enough, else global.
func (c *Classifier) pickScope(ctx context.Context, user string) (string, Totals, error) {
	if user != "" {
		s := c.Scope(user)
		t, err := c.store.Totals(ctx, s)
		if err != nil {
			return "", Totals{}, err
		}
		if c.userTrained(t) {
			return s, t, nil
		}
	}
	s := c.Scope("")
	t, err := c.store.Totals(ctx, s)
	return s, t, err
}

// ModelReader is an optional TokenStore extension for classification, the
// hot path: it reads the totals of candidate scopes and the rows of the
// chosen one in as few queries as it can (SQLStore: one for the totals,
// rows of the global model from a cache).
type ModelReader interface {
	// ReadModel reads the totals of scopes, picks the first i for which
	// usable(i, totals) holds (the last scope when none does) and
	// returns i, its totals and the rows of keys in it, aligned with keys.
	ReadModel(ctx context.Context, scopes []string, usable func(i int, t Totals) bool, keys []uint64) (int, Totals, []Row, error)
}

// userTrained reports whether a user's model may answer.
func (c *Classifier) userTrained(t Totals) bool {
	return t.Ham+t.Spam >= int64(c.cfg.MinUserTrain) && t.Ham > 0 && t.Spam > 0
}

// Classify scores m for user ("" = site model). explain asks for the ten
// strongest features.
func (c *Classifier) Classify(ctx context.Context, user string, m *message.Message, explain bool) (Result, error) {
	if c.words != nil {
		return c.classifyStack(ctx, user, m, explain)
	}
	if mr, ok := c.store.(ModelReader); ok {
		fs := c.Features(m, explain)
		scopes := []string{c.Scope("")}
		if user != "" {
			scopes = []string{c.Scope(user), c.Scope("")}
		}
		i, t, rows, err := mr.ReadModel(ctx, scopes, func(_ int, t Totals) bool { return c.userTrained(t) }, c.keys(fs))
		if err != nil {
			return Result{}, err
		}
		return c.result(scopes[i], t, fs, rows, explain), nil
	}
	scope, t, err := c.pickScope(ctx, user)
	if err != nil {
		return Result{}, err
	}
	fs := c.Features(m, explain)
	return c.classifyFeatures(ctx, scope, t, fs, explain)
}

func (c *Classifier) classifyFeatures(ctx context.Context, scope string, t Totals, fs []Feature, explain bool) (Result, error) {
	keys := c.keys(fs)
	rows, err := c.store.Get(ctx, scope, keys)
	if err != nil {
		return Result{}, err
	}
	return c.result(scope, t, fs, rows, explain), nil
}

// result scores the rows of fs's keys in scope.
func (c *Classifier) result(scope string, t Totals, fs []Feature, rows []Row, explain bool) Result {
	p, contrib := c.alg.score(rows, t)
	r := Result{Prob: p, Scope: scope, Ham: t.Ham, Spam: t.Spam,
		Trained: t.Ham >= int64(c.cfg.MinHam) && t.Spam >= int64(c.cfg.MinSpam) && t.Ham+t.Spam > 0}
	if explain {
		idx := make([]int, len(fs))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return math.Abs(contrib[idx[a]]) > math.Abs(contrib[idx[b]]) })
		for _, i := range idx {
			if len(r.Top) == 10 || contrib[i] == 0 {
				break
			}
			r.Top = append(r.Top, Contribution{Feature: fs[i].Name, Value: contrib[i]})
		}
	}
	return r
}

// LearnOutcome says what a Learn call did.
type LearnOutcome int

const (
	Learned      LearnOutcome = iota // the lesson was new and was learned
	AlreadyKnown                     // the same message was learned with the same label before
	Moved                            // it was learned with the other label; that lesson was replaced
	Skipped                          // on-error mode: the model already knew it
)

func (o LearnOutcome) String() string {
	return [...]string{"learned", "already-known", "moved", "skipped"}[o]
}

// Learn teaches user's model ("" = site model) that m is label. Learning
// the same message (same fingerprint) twice counts once; learning it with
// the opposite label moves it.
func (c *Classifier) Learn(ctx context.Context, user string, m *message.Message, label Label) (LearnOutcome, error) {
	f := c.lessonFeatures(m)
	return c.learn(ctx, user, f.keys, f.wkeys, f.fp, label)
}

// Correct is a person's correction of a message: a lesson for user's
// model and for the site model (once: a site lesson with the other label,
// from autolearn or another person, is moved). The site model made the
// mistake for every user whose own model is not trained yet, so it must
// learn it too.
func (c *Classifier) Correct(ctx context.Context, user string, m *message.Message, label Label) (LearnOutcome, error) {
	f := c.lessonFeatures(m)
	out, err := c.learn(ctx, user, f.keys, f.wkeys, f.fp, label)
	if err != nil || user == "" {
		return out, err
	}
	// learn itself skips a lesson the site model knows with this label.
	if _, err := c.learn(ctx, "", f.keys, f.wkeys, f.fp, label); err != nil {
		return out, err
	}
	return out, nil
}

// LearnFeatures is Learn with features already extracted (single-model
// algorithms; the stack needs the message: use Learn).
func (c *Classifier) LearnFeatures(ctx context.Context, user string, fs []Feature, fp [32]byte, label Label) (LearnOutcome, error) {
	if c.words != nil {
		return 0, errors.New("classify: LearnFeatures: the stack learns from messages (Learn)")
	}
	return c.learn(ctx, user, c.keys(fs), nil, fp, label)
}

// learn teaches the model(s) the lesson of the message whose feature
// keys are keys; wkeys are its word model's keys (stack). The stacker's
// keys are appended to keys (lessonFeatures leaves room for them).
func (c *Classifier) learn(ctx context.Context, user string, keys, wkeys []uint64, fp [32]byte, label Label) (LearnOutcome, error) {
	if label != Ham && label != Spam {
		return 0, errors.New("classify: label must be ham or spam")
	}
	scope := c.Scope(user)
	prev, err := c.store.Lesson(ctx, scope, fp)
	if err != nil {
		return 0, err
	}
	if prev == label {
		return AlreadyKnown, nil
	}
	n := len(keys)
	if c.words != nil {
		keys = append(keys, stackKeys...)
	}
	rows, err := c.store.Get(ctx, scope, keys)
	if err != nil {
		return 0, err
	}
	t, err := c.store.Totals(ctx, scope)
	if err != nil {
		return 0, err
	}
	srows := rows[n:] // the stacker's weights (stack only)
	keys, rows = keys[:n], rows[:n:n]
	p, _ := c.alg.score(rows, t)
	pDecide := p      // the probability Classify gives
	var stack []Delta // the stacker's step, learned with the model's
	if c.words != nil {
		// The stacker's prequential step: the scores of both models
		// before either learns this lesson.
		wscope := c.words.Scope(user)
		wt, err := c.store.Totals(ctx, wscope)
		if err != nil {
			return 0, err
		}
		wrows, err := c.store.Get(ctx, wscope, wkeys)
		if err != nil {
			return 0, err
		}
		in, _ := c.stackInputsOf(rows, t, wrows, wt)
		x := in.x()
		pDecide = stackProb(stackWeights(srows), x)
		if prev == Unknown {
			stack = stackUpdate(srows, x, pDecide, label)
		}
	}
	outcome := Learned
	var deltas []Delta
	var tt Totals
	if prev != Unknown {
		outcome = Moved
		if c.alg.exactUnlearn() {
			d, dt := c.alg.update(keys, rows, t, p, prev, -1)
			deltas, tt = d, dt
			// Recompute the base for the new lesson.
			rows = applyDeltas(keys, rows, d)
			t = addTotals(t, dt)
			p, _ = c.alg.score(rows, t)
		} else {
			// Discriminative models cannot subtract a past gradient step
			// exactly: the lesson counts move, and the weights take extra
			// steps toward the new label (below) until it is learned.
			if prev == Spam {
				tt.Spam--
			} else {
				tt.Ham--
			}
		}
	} else if c.cfg.TrainMode == "on-error" && !c.needsTraining(pDecide, label) {
		return Skipped, nil
	}
	steps := 1
	if outcome == Moved && !c.alg.exactUnlearn() {
		steps = 5
	}
	for i := 0; i < steps; i++ {
		d, dt := c.alg.update(keys, rows, t, p, label, 1)
		if i > 0 {
			dt.Ham, dt.Spam = 0, 0
		}
		if deltas == nil {
			deltas = d // the usual single step: no copy
		} else {
			deltas = append(deltas, d...)
		}
		tt = addTotals(tt, dt)
		if i == steps-1 {
			break
		}
		rows = applyDeltas(keys, rows, d)
		t = addTotals(t, dt)
		p, _ = c.alg.score(rows, t)
		if !c.needsTraining(p, label) {
			break
		}
	}
	buf := deltaBufs.Get().(*[]Delta)
	deltas = append(mergeDeltasInto((*buf)[:0], deltas), stack...)
	err = c.store.Update(ctx, scope, Batch{Deltas: deltas, Totals: tt, Lesson: &Lesson{FP: fp, Label: label}})
	*buf = deltas[:0]
	deltaBufs.Put(buf)
	if err != nil {
		return 0, err
	}
	if c.words != nil {
		if _, err := c.words.learn(ctx, user, wkeys, nil, fp, label); err != nil {
			return 0, err
		}
	}
	return outcome, nil
}

// needsTraining is the train-on-error-with-margin rule: wrong, or right by
// less than a margin (probability within 0.4 of the label's target).
func (c *Classifier) needsTraining(p float64, l Label) bool {
	if l == Spam {
		return p < 0.9
	}
	return p > 0.1
}

func applyDeltas(keys []uint64, rows []Row, d []Delta) []Row {
	out := make([]Row, len(rows))
	copy(out, rows)
	pos := make(map[uint64][]int, len(keys))
	for i, k := range keys {
		pos[k] = append(pos[k], i)
	}
	for _, x := range d {
		for _, i := range pos[x.Key] {
			out[i].Ham += x.Ham
			out[i].Spam += x.Spam
			out[i].W += x.W
			out[i].G += x.G
		}
	}
	return out
}

func addTotals(a, b Totals) Totals {
	return Totals{Ham: a.Ham + b.Ham, Spam: a.Spam + b.Spam, Bias: a.Bias + b.Bias}
}

// mergeDeltas combines deltas of the same key (hash collisions, repeated
// steps) so a store applies each key once: each key's deltas are added
// up in their order, at the place of its first delta.
func mergeDeltas(d []Delta) []Delta {
	if len(d) == 0 {
		return d
	}
	return mergeDeltasInto(make([]Delta, 0, len(d)), d)
}

// deltaBufs are learn's buffers of merged deltas (a few thousand a
// lesson), reused once the store applied them.
var deltaBufs = sync.Pool{New: func() any { return new([]Delta) }}

// mergeDeltasInto appends the merged deltas of d to out.
func mergeDeltasInto(out, d []Delta) []Delta {
	// Every lesson merges a few thousand deltas: a Go map made for each
	// call cost more than the learning step itself.
	ix := keyIndexes.Get().(*keyIndex)
	defer keyIndexes.Put(ix)
	ix.reset(len(d))
	base := len(out)
	for _, x := range d {
		if i, seen := ix.put(x.Key, int32(len(out)-base)); seen {
			m := &out[base+int(i)]
			m.Ham += x.Ham
			m.Spam += x.Spam
			m.W += x.W
			m.G += x.G
			continue
		}
		out = append(out, x)
	}
	return out
}

// keyIndex maps keys to small integers (open addressing), emptied in
// constant time: a slot belongs to the current use only if it carries
// its generation.
type keyIndex struct {
	slots []keySlot
	gen   uint32
}

type keySlot struct {
	key uint64
	val int32
	gen uint32
}

var keyIndexes = sync.Pool{New: func() any { return new(keyIndex) }}

// reset empties the index for up to n keys.
func (x *keyIndex) reset(n int) {
	size := 1 << 10
	for size < 2*n {
		size <<= 1
	}
	x.gen++
	if len(x.slots) < size || x.gen == 0 {
		x.slots = make([]keySlot, max(size, len(x.slots)))
		x.gen = 1
	}
}

// put returns k's value if k is in the index (seen), else adds it with v.
func (x *keyIndex) put(k uint64, v int32) (int32, bool) {
	mask := uint64(len(x.slots) - 1)
	for i := (k * 0x9E3779B97F4A7C15) >> 32 & mask; ; i = (i + 1) & mask {
		s := &x.slots[i]
		if s.gen != x.gen {
			*s = keySlot{key: k, val: v, gen: x.gen}
			return v, false
		}
		if s.key == k {
			return s.val, true
		}
	}
}

// Size returns the number of stored keys in the site model.
func (c *Classifier) Size(ctx context.Context) (int64, error) {
	return c.store.Size(ctx, c.Scope(""))
}

// Totals returns the lesson counts of user's model ("" = site).
func (c *Classifier) Totals(ctx context.Context, user string) (Totals, error) {
	return c.store.Totals(ctx, c.Scope(user))
}

// DefaultLearnerCommit is how many lessons a Learner writes per
// transaction by default. Consecutive lessons touch mostly the same rows
// (common 4-grams and words), so a longer batch writes each row fewer
// times: learning the 3,250-message shared corpus into SQLite took 10.8 s
// with 500 and 5.5 s in one batch. The overlay holds only the rows the
// batch touched, so its memory is bounded by the model's size.
const DefaultLearnerCommit = 5000

// Learner learns many lessons in a row (moat learn): against a store
// that supports it (BulkStore: SQLStore), the lessons are learned in
// memory, in order, each seeing the ones before it, and written every
// commitEvery lessons and by Flush, each time in one transaction. The
// model written is the one learning the lessons one by one with Learn
// would have written. Other stores learn each lesson at once. A Learner
// is not safe for concurrent use; Flush before dropping it.
type Learner struct {
	c, direct   *Classifier
	ov          *overlay
	every, todo int
}

// NewLearner returns a Learner committing every commitEvery lessons (<= 0:
// DefaultLearnerCommit).
func (c *Classifier) NewLearner(commitEvery int) *Learner {
	if commitEvery <= 0 {
		commitEvery = DefaultLearnerCommit
	}
	l := &Learner{c: c, direct: c, every: commitEvery}
	bs, ok := c.store.(BulkStore)
	if !ok {
		return l
	}
	l.ov = newOverlay(bs)
	l.c = c.withStore(l.ov)
	return l
}

// withStore returns a copy of c (and of its word model) over store.
func (c *Classifier) withStore(store TokenStore) *Classifier {
	cc := *c
	cc.store = store
	if c.words != nil {
		cc.words = c.words.withStore(store)
	}
	return &cc
}

// Learn is Classifier.Learn within the batch.
func (l *Learner) Learn(ctx context.Context, user string, m *message.Message, label Label) (LearnOutcome, error) {
	return l.learnFeatures(ctx, user, l.c.lessonFeatures(m), label)
}

// Flush writes the lessons learned since the last commit. After an error
// of Learn or Flush, the lessons of the batch not yet written are lost
// (none is half written).
func (l *Learner) Flush(ctx context.Context) error {
	if l.ov == nil {
		return nil
	}
	l.todo = 0
	return l.ov.flush(ctx)
}
