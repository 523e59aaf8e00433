package classify

import (
	"cmp"
	"math"
	"slices"
)

// algorithm is one scoring/learning method over store rows.
type algorithm interface {
	name() string
	featureSet() FeatureSet
	// key maps a feature hash to its store key.
	key(h uint64) uint64
	// score returns P(spam) and each row's contribution to the decision
	// (log-odds units, positive = spammy).
	score(rows []Row, t Totals) (float64, []float64)
	// update returns the deltas and the totals change for learning one
	// message labelled l whose current probability is p. sign is +1 to
	// learn, -1 to unlearn (count models only).
	update(keys []uint64, rows []Row, t Totals, p float64, l Label, sign int64) ([]Delta, Totals)
	// exactUnlearn reports whether update(sign=-1) exactly undoes a lesson.
	exactUnlearn() bool
}

// ---- (a) Robinson/Fisher chi-square combining (SpamBayes, bogofilter) ----

type chi2 struct {
	s, x, minDev float64
	maxClues     int
}

func newChi2() *chi2 {
	// SpamBayes defaults: unknown_word_strength 0.45, unknown_word_prob
	// 0.5, minimum_prob_strength 0.1, max_discriminators 150.
	return &chi2{s: 0.45, x: 0.5, minDev: 0.1, maxClues: 150}
}

func (c *chi2) name() string           { return "chi2" }
func (c *chi2) featureSet() FeatureSet { return FeatureSet{Words: true, Markup: true} }
func (c *chi2) key(h uint64) uint64    { return h >> 1 } // 63 bits: fits SQLite INTEGER
func (c *chi2) exactUnlearn() bool     { return true }
func (c *chi2) tokenProb(r Row, t Totals) float64 {
	n := float64(r.Ham + r.Spam)
	if n == 0 || t.Ham == 0 && t.Spam == 0 {
		return c.x
	}
	hr, sr := 0.0, 0.0
	if t.Ham > 0 {
		hr = float64(r.Ham) / float64(t.Ham)
	}
	if t.Spam > 0 {
		sr = float64(r.Spam) / float64(t.Spam)
	}
	p := c.x
	if hr+sr > 0 {
		p = sr / (hr + sr)
	}
	return (c.s*c.x + n*p) / (c.s + n)
}

func (c *chi2) score(rows []Row, t Totals) (float64, []float64) {
	contrib := make([]float64, len(rows))
	type clue struct {
		i    int
		f, d float64 // d = |f-0.5|
	}
	clues := make([]clue, 0, len(rows))
	for i, r := range rows {
		f := c.tokenProb(r, t)
		if d := math.Abs(f - 0.5); d >= c.minDev {
			clues = append(clues, clue{i, f, d})
		}
	}
	if len(clues) > c.maxClues {
		// The strongest clues; equally strong ones in feature order, so
		// the pick does not depend on the sort algorithm.
		slices.SortFunc(clues, func(a, b clue) int {
			if c := cmp.Compare(b.d, a.d); c != 0 {
				return c
			}
			return cmp.Compare(a.i, b.i)
		})
		clues = clues[:c.maxClues]
	}
	if len(clues) == 0 {
		return 0.5, contrib
	}
	var lnH, lnS float64
	for _, cl := range clues {
		f := math.Min(math.Max(cl.f, 1e-6), 1-1e-6)
		lnH += math.Log(f)
		lnS += math.Log(1 - f)
		contrib[cl.i] = math.Log(f / (1 - f))
	}
	n := 2 * len(clues)
	S := 1 - chi2Q(-2*lnS, n)
	H := 1 - chi2Q(-2*lnH, n)
	return (S - H + 1) / 2, contrib
}

// chi2Q is P(chisq >= x2) with v (even) degrees of freedom.
func chi2Q(x2 float64, v int) float64 {
	m := x2 / 2
	sum := math.Exp(-m)
	term := sum
	for i := 1; i < v/2; i++ {
		term *= m / float64(i)
		sum += term
	}
	return math.Min(sum, 1)
}

func (c *chi2) update(keys []uint64, rows []Row, t Totals, p float64, l Label, sign int64) ([]Delta, Totals) {
	d := make([]Delta, len(keys))
	var tt Totals
	for i, k := range keys {
		d[i].Key = k
		if l == Spam {
			d[i].Spam = sign
		} else {
			d[i].Ham = sign
		}
	}
	if l == Spam {
		tt.Spam = sign
	} else {
		tt.Ham = sign
	}
	return d, tt
}

// ---- (b) online logistic regression over hashed sparse features ----

type logreg struct {
	mask    uint64
	eta     float64
	etaBias float64
	ada     bool
	fs      FeatureSet
}

func newLogreg(bits int, eta float64, adaptive bool, fs FeatureSet) *logreg {
	return &logreg{mask: 1<<uint(bits) - 1, eta: eta, etaBias: eta, ada: adaptive, fs: fs}
}

func (m *logreg) name() string { return "logreg" }
func (m *logreg) featureSet() FeatureSet {
	return m.fs
}
func (m *logreg) key(h uint64) uint64 {
	// Fold the high bits in before masking so every bit of the hash counts.
	return (h ^ h>>29 ^ h>>47) & m.mask
}
func (m *logreg) exactUnlearn() bool { return false }

// The feature vector is binary and L2-normalized: each present feature
// has value 1/sqrt(n). The bias has a constant input of 1.
func (m *logreg) margin(rows []Row, t Totals) (float64, float64) {
	if len(rows) == 0 {
		return t.Bias, 0
	}
	x := 1 / math.Sqrt(float64(len(rows)))
	s := t.Bias
	for _, r := range rows {
		s += r.W * x
	}
	return s, x
}

func sigmoid(s float64) float64 { return 1 / (1 + math.Exp(-s)) }

func (m *logreg) score(rows []Row, t Totals) (float64, []float64) {
	s, x := m.margin(rows, t)
	contrib := make([]float64, len(rows))
	for i, r := range rows {
		contrib[i] = r.W * x
	}
	return sigmoid(s), contrib
}

func (m *logreg) update(keys []uint64, rows []Row, t Totals, p float64, l Label, sign int64) ([]Delta, Totals) {
	y := 0.0
	if l == Spam {
		y = 1
	}
	e := y - p
	x := 1.0
	if len(keys) > 0 {
		x = 1 / math.Sqrt(float64(len(keys)))
	}
	d := make([]Delta, len(keys))
	for i, k := range keys {
		g := e * x
		if m.ada {
			// AdaGrad: per-feature step eta/sqrt(sum of squared gradients).
			G := rows[i].G + g*g
			d[i] = Delta{Key: k, W: m.eta * g / math.Sqrt(G+1e-12), G: g * g}
		} else {
			d[i] = Delta{Key: k, W: m.eta * g}
		}
	}
	tt := Totals{Bias: m.etaBias * e}
	if l == Spam {
		tt.Spam = sign
	} else {
		tt.Ham = sign
	}
	return d, tt
}
