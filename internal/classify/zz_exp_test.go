package classify

import (
	"context"
	"encoding/gob"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"testing"

	"moat.dev/moat/internal/message"
)

// Temporary experiment harness (not kept).

type expRec struct {
	Label  Label
	ZLR    float64
	Chi2P  float64
	NBSum  float64
	RobSum float64
	NWords int
	NClues int
	H, S   int64
}

func expBase(t *testing.T, seed uint64) []expRec {
	path := fmt.Sprintf("/tmp/exp4/base-%d.gob", seed)
	if f, err := os.Open(path); err == nil {
		var rs []expRec
		if err := gob.NewDecoder(f).Decode(&rs); err == nil {
			f.Close()
			return rs
		}
		f.Close()
	}
	var items []Item
	if err := ReadSource(corpusPath, func(it Item) error { items = append(items, it); return nil }); err != nil {
		t.Fatal(err)
	}
	items = OnlineOrder(items, seed)
	ctx := context.Background()
	lcfg := DefaultConfig()
	lr, _ := New(lcfg, NewMemStore())
	ccfg := DefaultConfig()
	ccfg.Algorithm = "chi2"
	ch, _ := New(ccfg, NewMemStore())
	ch2 := ch.alg.(*chi2)
	lrm := lr.alg.(*logreg)
	var out []expRec
	for _, it := range items {
		m := message.ParseBytes(it.Data, message.DefaultLimits())
		fl := lr.Features(m, false)
		kl := lr.keys(fl)
		rl, _ := lr.store.Get(ctx, lr.Scope(""), kl)
		tl, _ := lr.store.Totals(ctx, lr.Scope(""))
		z, _ := lrm.margin(rl, tl)
		fc := ch.Features(m, false)
		kc := ch.keys(fc)
		rc, _ := ch.store.Get(ctx, ch.Scope(""), kc)
		tc, _ := ch.store.Totals(ctx, ch.Scope(""))
		p, _ := ch2.score(rc, tc)
		var nb, rob float64
		nclues := 0
		for _, r := range rc {
			if tc.Ham+tc.Spam > 0 {
				ps := (float64(r.Spam) + 1) / (float64(tc.Spam) + 2)
				ph := (float64(r.Ham) + 1) / (float64(tc.Ham) + 2)
				nb += math.Log(ps / ph)
			}
			f := ch2.tokenProb(r, tc)
			if math.Abs(f-0.5) >= ch2.minDev {
				nclues++
				f = math.Min(math.Max(f, 1e-6), 1-1e-6)
				rob += math.Log(f / (1 - f))
			}
		}
		out = append(out, expRec{Label: it.Label, ZLR: z, Chi2P: p, NBSum: nb, RobSum: rob, NWords: len(fc), NClues: nclues, H: tl.Ham, S: tl.Spam})
		lr.LearnFeatures(ctx, "", fl, m.Fingerprint, it.Label)
		ch.LearnFeatures(ctx, "", fc, m.Fingerprint, it.Label)
	}
	f, _ := os.Create(path)
	gob.NewEncoder(f).Encode(out)
	f.Close()
	return out
}

type expMetrics struct {
	roca                 float64
	fp5, fn5, fp99, fn99 int
	fnBest, fnBest2      int
	gfp99, gfn99         int
	fp99b, fn99b         int // second half
}

func expEval(rs []expRec, p []float64) expMetrics {
	sc := make([]Scored, len(rs))
	for i, r := range rs {
		sc[i] = Scored{Label: r.Label, Prob: p[i], Trained: r.H >= 50 && r.S >= 50}
	}
	er := &EvalResult{Scored: sc}
	er.summarize(0.5)
	var m expMetrics
	m.roca = er.OneMinusROCAPercent()
	m.fp5, m.fn5, _, _ = er.At(0.5, 0)
	m.fp99, m.fn99, _, _ = er.At(0.99, 0)
	m.fp99b, m.fn99b, _, _ = er.At(0.99, len(sc)/2)
	m.fnBest, _ = er.FNAtFP(0.001, 0)
	m.fnBest2, _ = er.FNAtFP(0.001, len(sc)/2)
	for _, s := range sc {
		sp := s.Prob >= 0.99 && s.Trained
		if s.Label == Spam && !sp {
			m.gfn99++
		}
		if s.Label == Ham && sp {
			m.gfp99++
		}
	}
	return m
}

func (m expMetrics) String() string {
	return fmt.Sprintf("roca %.3f | .5: %2d/%3d | .99: %2d/%3d (2nd %d/%2d) gated %d/%3d | best %3d, 2nd %2d", m.roca, m.fp5, m.fn5, m.fp99, m.fn99, m.fp99b, m.fn99b, m.gfp99, m.gfn99, m.fnBest, m.fnBest2)
}

type stackCfg struct {
	name   string
	inputs func(r expRec) []float64
	init   []float64
	eta    float64
	ada    bool
	l2     float64
}

func clip(x, a float64) float64 { return math.Max(-a, math.Min(a, x)) }
func logit(p float64) float64 {
	p = math.Min(math.Max(p, 1e-12), 1-1e-12)
	return math.Log(p / (1 - p))
}

func runStack(rs []expRec, sc stackCfg) []float64 {
	w := append([]float64(nil), sc.init...)
	G := make([]float64, len(w))
	out := make([]float64, len(rs))
	for i, r := range rs {
		x := sc.inputs(r)
		s := 0.0
		for j := range w {
			s += w[j] * x[j]
		}
		p := sigmoid(s)
		out[i] = p
		y := 0.0
		if r.Label == Spam {
			y = 1
		}
		e := y - p
		for j := range w {
			g := e*x[j] - sc.l2*w[j]
			if sc.ada {
				G[j] += g * g
				w[j] += sc.eta * g / math.Sqrt(G[j]+1e-12)
			} else {
				w[j] += sc.eta * g
			}
		}
	}
	return out
}

func TestExp(t *testing.T) {
	if os.Getenv("MOAT_EXP") == "" {
		t.Skip()
	}
	bases := map[uint64][]expRec{}
	for s := uint64(1); s <= 3; s++ {
		bases[s] = expBase(t, s)
	}
	one := func(xs ...float64) []float64 { return append(xs, 1) }
	cfgs := []stackCfg{}
	for _, eta := range []float64{0.003, 0.01, 0.03, 0.1} {
		cfgs = append(cfgs,
			stackCfg{name: fmt.Sprintf("lr+chi2 sgd%.3f", eta), inputs: func(r expRec) []float64 { return one(r.ZLR, clip(logit(r.Chi2P), 10)) }, init: []float64{1, 0, 0}, eta: eta},
			stackCfg{name: fmt.Sprintf("lr+chi2 2slope sgd%.3f", eta), inputs: func(r expRec) []float64 { return one(r.ZLR, math.Max(r.ZLR, 0), clip(logit(r.Chi2P), 10)) }, init: []float64{1, 0, 0, 0}, eta: eta},
		)
	}
	for _, sc := range cfgs {
		for s := uint64(1); s <= 3; s++ {
			rs := bases[s]
			var p []float64
			if sc.eta == 0 {
				p = make([]float64, len(rs))
				for i, r := range rs {
					x := sc.inputs(r)
					p[i] = sigmoid(x[0])
				}
			} else {
				p = runStack(rs, sc)
			}
			t.Logf("%-28s s%d %v %s", sc.name, s, expEval(rs, p), expPos(rs, p))
		}
	}
	// baseline
	for s := uint64(1); s <= 3; s++ {
		rs := bases[s]
		p := make([]float64, len(rs))
		for i, r := range rs {
			p[i] = sigmoid(r.ZLR)
		}
		t.Logf("%-28s s%d %v", "lr base", s, expEval(rs, p))
	}
	_ = sort.Ints
}

// expPos: spam missed at 0.99 and at the best FP<=0.1% cut, by tenth of the stream.
func expPos(rs []expRec, p []float64) string {
	var hams []float64
	for i, r := range rs {
		if r.Label == Ham {
			hams = append(hams, p[i])
		}
	}
	sort.Float64s(hams)
	cut := hams[len(hams)-1-int(0.001*float64(len(hams)))]
	a, b := make([]int, 10), make([]int, 10)
	for i, r := range rs {
		if r.Label != Spam {
			continue
		}
		d := i * 10 / len(rs)
		if p[i] < 0.99 {
			a[d]++
		}
		if p[i] <= cut {
			b[d]++
		}
	}
	return fmt.Sprint(a, b)
}

func TestExpEval(t *testing.T) {
	alg := os.Getenv("MOAT_EXP_ALG")
	if alg == "" {
		t.Skip()
	}
	var all []Item
	if err := ReadSource(corpusPath, func(it Item) error { all = append(all, it); return nil }); err != nil {
		t.Fatal(err)
	}
	for s := uint64(1); s <= 3; s++ {
		items := OnlineOrder(append([]Item(nil), all...), s)
		cfg := DefaultConfig()
		cfg.Algorithm = alg
		c, _ := New(cfg, NewMemStore())
		res, err := Online(context.Background(), c, items, message.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		res.Report(&b)
		t.Logf("seed %d\n%s", s, b.String())
	}
}
