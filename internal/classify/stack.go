package classify

import (
	"context"
	"math"
	"sort"

	"moat.dev/moat/internal/message"
)

// The "stack" algorithm (default) combines two models of the same
// message by a tiny online logistic regression, the stacker:
//
//	P(spam) = sigmoid(w0·z_lr + w1·z_words + w2)
//
// z_lr is the margin of the logistic regression over character 4-grams
// (scope "logreg:..."), and z_words = logit(p) of the Robinson/Fisher
// chi-square model over word tokens (scope "chi2:..."), clipped to ±10.
// The count model learns from fewer examples; the 4-gram model ranks
// better once it has seen enough. The stacker is trained prequentially:
// on each new lesson, with the scores the message got *before* either
// model learned it, so it is also an online Platt calibration (Platt
// 1999) of the combination and its probabilities track how often a
// score turned out to be spam. Its three weights are kept as reserved
// keys in the logistic-regression scope (weight in W, AdaGrad sum in G),
// written in the same atomic batch as that model's update; they start at
// (1, 0, 0), which is the plain logistic regression.

// stackKeyBase is the first reserved key of the stacker's weights. The
// logistic regression's own keys are below 2^26 (hash_bits <= 26).
const stackKeyBase uint64 = 1 << 62

// stackInit are the stacker's starting weights: z_lr alone.
var stackInit = [3]float64{1, 0, 0}

var stackKeys = []uint64{stackKeyBase, stackKeyBase + 1, stackKeyBase + 2}

const (
	stackEta   = 0.1 // AdaGrad step of the stacker
	wordsClip  = 10  // |z_words| cap: chi-square probabilities saturate at 0 and 1
	marginClip = 50  // |z_lr| cap, for numeric safety only
)

// stackInputs are one message's stacker inputs.
type stackInputs struct {
	zl, zw float64
	wc     []float64 // word model contributions (explanations)
}

func (s stackInputs) x() [3]float64 { return [3]float64{s.zl, s.zw, 1} }

// stackWeights reads the stacker's weights from its reserved rows.
func stackWeights(rows []Row) [3]float64 {
	w := stackInit
	for j := range w {
		w[j] += rows[j].W
	}
	return w
}

func stackProb(w, x [3]float64) float64 {
	s := 0.0
	for j := range w {
		s += w[j] * x[j]
	}
	return sigmoid(s)
}

// stackUpdate is one AdaGrad step of the stacker on the log-loss of the
// prequential probability p.
func stackUpdate(rows []Row, x [3]float64, p float64, l Label) []Delta {
	y := 0.0
	if l == Spam {
		y = 1
	}
	d := make([]Delta, len(stackKeys))
	for j, k := range stackKeys {
		g := (y - p) * x[j]
		G := rows[j].G + g*g
		d[j] = Delta{Key: k, G: g * g}
		if G > 0 {
			d[j].W = stackEta * g / math.Sqrt(G)
		}
	}
	return d
}

func clipAbs(x, a float64) float64 { return math.Max(-a, math.Min(a, x)) }

// wordLogit turns the chi-square model's probability into log-odds.
func wordLogit(p float64) float64 {
	p = math.Min(math.Max(p, 1e-9), 1-1e-9)
	return clipAbs(math.Log(p/(1-p)), wordsClip)
}

// lrMargin is the logistic regression's margin over rows.
func (c *Classifier) lrMargin(rows []Row, t Totals) (float64, []float64) {
	lr := c.alg.(*logreg)
	s, x := lr.margin(rows, t)
	contrib := make([]float64, len(rows))
	for i, r := range rows {
		contrib[i] = r.W * x
	}
	return clipAbs(s, marginClip), contrib
}

// wordInputs scores the word model's rows.
func (c *Classifier) wordInputs(rows []Row, t Totals) (float64, []float64) {
	p, contrib := c.words.alg.score(rows, t)
	return wordLogit(p), contrib
}

// readWords reads the word model's totals and rows in scope.
func (c *Classifier) readWords(ctx context.Context, scope string, keys []uint64) (Totals, []Row, error) {
	if mr, ok := c.store.(ModelReader); ok {
		_, t, rows, err := mr.ReadModel(ctx, []string{scope}, func(int, Totals) bool { return true }, keys)
		return t, rows, err
	}
	t, err := c.store.Totals(ctx, scope)
	if err != nil {
		return Totals{}, nil, err
	}
	rows, err := c.store.Get(ctx, scope, keys)
	return t, rows, err
}

// classifyStack is Classify for the stack.
func (c *Classifier) classifyStack(ctx context.Context, user string, m *message.Message, explain bool) (Result, error) {
	lf := Extract(m, c.fs, explain)
	wf := Extract(m, c.words.fs, explain)
	keys := append(c.keys(lf), stackKeys...)
	scopes := []string{c.Scope("")}
	if user != "" {
		scopes = []string{c.Scope(user), c.Scope("")}
	}
	var (
		i    int
		t    Totals
		rows []Row
		err  error
	)
	if mr, ok := c.store.(ModelReader); ok {
		i, t, rows, err = mr.ReadModel(ctx, scopes, func(_ int, t Totals) bool { return c.userTrained(t) }, keys)
		if err != nil {
			return Result{}, err
		}
	} else {
		var scope string
		scope, t, err = c.pickScope(ctx, user)
		if err != nil {
			return Result{}, err
		}
		if scope != scopes[0] {
			i = 1
		}
		if rows, err = c.store.Get(ctx, scope, keys); err != nil {
			return Result{}, err
		}
	}
	wuser := user
	if scopes[i] == c.Scope("") {
		wuser = ""
	}
	wt, wrows, err := c.readWords(ctx, c.words.Scope(wuser), c.words.keys(wf))
	if err != nil {
		return Result{}, err
	}
	n := len(lf)
	in, lc := c.stackInputsOf(rows[:n], t, wrows, wt)
	w := stackWeights(rows[n:])
	r := Result{Prob: stackProb(w, in.x()), Scope: scopes[i], Ham: t.Ham, Spam: t.Spam,
		Trained: t.Ham >= int64(c.cfg.MinHam) && t.Spam >= int64(c.cfg.MinSpam) && t.Ham+t.Spam > 0}
	if explain {
		r.Top = stackExplain(lf, lc, wf, in, w)
	}
	return r, nil
}

func (c *Classifier) stackInputsOf(rows []Row, t Totals, wrows []Row, wt Totals) (stackInputs, []float64) {
	zl, lc := c.lrMargin(rows, t)
	zw, wc := c.wordInputs(wrows, wt)
	return stackInputs{zl: zl, zw: zw, wc: wc}, lc
}

// stackExplain lists the ten strongest features of both models in the
// stacker's units: 4-gram contributions times w0, and the word model's
// log-odds z_words times w1 shared among its clues in proportion to
// their own log-odds.
func stackExplain(lf []Feature, lc []float64, wf []Feature, in stackInputs, w [3]float64) []Contribution {
	var all []Contribution
	for i, f := range lf {
		if v := lc[i] * w[0]; v != 0 {
			all = append(all, Contribution{Feature: f.Name, Value: v})
		}
	}
	sum := 0.0
	for _, v := range in.wc {
		sum += v
	}
	if sum != 0 {
		for i, f := range wf {
			if v := in.wc[i] / sum * in.zw * w[1]; v != 0 {
				all = append(all, Contribution{Feature: "word " + f.Name, Value: v})
			}
		}
	}
	sort.SliceStable(all, func(a, b int) bool { return math.Abs(all[a].Value) > math.Abs(all[b].Value) })
	if len(all) > 10 {
		all = all[:10]
	}
	return all
}
