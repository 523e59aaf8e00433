package classify

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"moat.dev/moat/internal/message"
)

// Scored is one evaluated message.
type Scored struct {
	Name    string
	Label   Label
	Prob    float64
	Trained bool // the model was past min_ham/min_spam when it scored this message
}

// EvalResult summarizes one evaluation run.
type EvalResult struct {
	Algorithm   string
	Protocol    string // "online" or "split"
	Scored      []Scored
	Ham, Spam   int
	AUC         float64
	FP, FN      int     // at the threshold, over every scored message
	FPRate      float64 // FP / ham
	FNRate      float64 // FN / spam
	GatedFP     int     // as deployed: no verdict while the model is silent (untrained)
	GatedFN     int
	ClassifyDur time.Duration // parse + features + score
	LearnDur    time.Duration // parse + features + update
	Classified  int
	Learned     int
	ModelKeys   int64
	threshold   float64
}

// OneMinusROCAPercent is (1 - AUC) * 100, the TREC "1-ROCA%".
func (r *EvalResult) OneMinusROCAPercent() float64 { return (1 - r.AUC) * 100 }

// ClassifyRate is messages classified per second.
func (r *EvalResult) ClassifyRate() float64 { return rate(r.Classified, r.ClassifyDur) }

// LearnRate is messages learned per second.
func (r *EvalResult) LearnRate() float64 { return rate(r.Learned, r.LearnDur) }

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Online runs the TREC online protocol over items (already in order, see
// OnlineOrder): classify each message, then learn it with its true label.
func Online(ctx context.Context, c *Classifier, items []Item, lim message.Limits) (*EvalResult, error) {
	return run(ctx, c, items, len(items), true, lim)
}

// Split learns the first trainFrac of items (in order) and then only
// classifies the rest.
func Split(ctx context.Context, c *Classifier, items []Item, trainFrac float64, lim message.Limits) (*EvalResult, error) {
	n := int(float64(len(items)) * trainFrac)
	return run(ctx, c, items, n, false, lim)
}

func run(ctx context.Context, c *Classifier, items []Item, nTrain int, online bool, lim message.Limits) (*EvalResult, error) {
	res := &EvalResult{Algorithm: c.cfg.Algorithm, Protocol: "online"}
	if !online {
		res.Protocol = "split"
	}
	learn := func(it Item) error {
		t0 := time.Now()
		m := message.ParseBytes(it.Data, lim)
		if _, err := c.Learn(ctx, "", m, it.Label); err != nil {
			return fmt.Errorf("%s: %w", it.Name, err)
		}
		res.LearnDur += time.Since(t0)
		res.Learned++
		return nil
	}
	classify := func(it Item) error {
		t0 := time.Now()
		m := message.ParseBytes(it.Data, lim)
		r, err := c.Classify(ctx, "", m, false)
		if err != nil {
			return fmt.Errorf("%s: %w", it.Name, err)
		}
		res.ClassifyDur += time.Since(t0)
		res.Classified++
		res.Scored = append(res.Scored, Scored{Name: it.Name, Label: it.Label, Prob: r.Prob, Trained: r.Trained})
		return nil
	}
	for i, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if online {
			if err := classify(it); err != nil {
				return nil, err
			}
			if err := learn(it); err != nil {
				return nil, err
			}
			continue
		}
		if i < nTrain {
			if err := learn(it); err != nil {
				return nil, err
			}
		} else if err := classify(it); err != nil {
			return nil, err
		}
	}
	res.summarize(c.cfg.Threshold)
	keys, err := c.Size(ctx)
	if err != nil {
		return nil, err
	}
	res.ModelKeys = keys
	return res, nil
}

func (r *EvalResult) summarize(threshold float64) {
	r.Ham, r.Spam, r.FP, r.FN, r.GatedFP, r.GatedFN = 0, 0, 0, 0, 0, 0
	for _, s := range r.Scored {
		spam := s.Prob >= threshold
		if s.Label == Spam {
			r.Spam++
			if !spam {
				r.FN++
			}
			if !spam || !s.Trained {
				r.GatedFN++
			}
		} else {
			r.Ham++
			if spam {
				r.FP++
				if s.Trained {
					r.GatedFP++
				}
			}
		}
	}
	if r.Ham > 0 {
		r.FPRate = float64(r.FP) / float64(r.Ham)
	}
	if r.Spam > 0 {
		r.FNRate = float64(r.FN) / float64(r.Spam)
	}
	r.AUC = AUC(r.Scored)
	r.threshold = threshold
}

// AUC is the area under the ROC curve (spam positive), ties counted half:
// the Mann-Whitney statistic.
func AUC(s []Scored) float64 {
	xs := append([]Scored(nil), s...)
	sort.Slice(xs, func(i, j int) bool { return xs[i].Prob < xs[j].Prob })
	var nPos, nNeg float64
	var rankSumPos float64
	for i := 0; i < len(xs); {
		j := i
		for j < len(xs) && xs[j].Prob == xs[i].Prob {
			j++
		}
		avgRank := float64(i+j+1) / 2 // ranks are 1-based: (i+1 + j)/2
		for k := i; k < j; k++ {
			if xs[k].Label == Spam {
				nPos++
				rankSumPos += avgRank
			} else {
				nNeg++
			}
		}
		i = j
	}
	if nPos == 0 || nNeg == 0 {
		return 0
	}
	return (rankSumPos - nPos*(nPos+1)/2) / (nPos * nNeg)
}

// TagProb is the probability at which the bayes check alone reaches the
// default tag score (5 points = BAYES_95): the classifier's default
// threshold, so that moat eval's FP/FN are where a gateway acts on the
// classifier with no other layer's help.
const TagProb = 0.95

// At counts false positives and false negatives at threshold over the
// scored messages from index from on (from = 0: the whole stream).
func (r *EvalResult) At(threshold float64, from int) (fp, fn, ham, spam int) {
	for _, s := range r.Scored[min(from, len(r.Scored)):] {
		if s.Label == Spam {
			spam++
			if s.Prob < threshold {
				fn++
			}
		} else {
			ham++
			if s.Prob >= threshold {
				fp++
			}
		}
	}
	return
}

// FNAtFP is the operating point with no more than maxFPRate false
// positives: the number of spam missed by the lowest threshold that keeps
// false positives at or below maxFPRate of the ham (from index from on).
func (r *EvalResult) FNAtFP(maxFPRate float64, from int) (fn, spam int) {
	var hams, spams []float64
	for _, s := range r.Scored[min(from, len(r.Scored)):] {
		if s.Label == Spam {
			spams = append(spams, s.Prob)
		} else {
			hams = append(hams, s.Prob)
		}
	}
	if len(hams) == 0 {
		return 0, len(spams)
	}
	sort.Float64s(hams)
	allowed := int(maxFPRate * float64(len(hams)))
	if allowed >= len(hams) {
		return 0, len(spams)
	}
	cut := hams[len(hams)-1-allowed] // spam must score above this
	for _, p := range spams {
		if p <= cut {
			fn++
		}
	}
	return fn, len(spams)
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// Report writes a human-readable summary.
func (r *EvalResult) Report(w io.Writer) {
	fmt.Fprintf(w, "classifier:        %s (%s protocol)\n", r.Algorithm, r.Protocol)
	fmt.Fprintf(w, "messages scored:   %d (%d ham, %d spam)\n", len(r.Scored), r.Ham, r.Spam)
	fmt.Fprintf(w, "ROC AUC:           %.6f\n", r.AUC)
	fmt.Fprintf(w, "1-ROCA%%:           %.4f\n", r.OneMinusROCAPercent())
	fmt.Fprintf(w, "threshold:         %.2f (the default %.2f is where the bayes check alone tags)\n", r.threshold, TagProb)
	fmt.Fprintf(w, "FP rate:           %.3f%% (%d of %d ham)\n", 100*r.FPRate, r.FP, r.Ham)
	fmt.Fprintf(w, "FN rate:           %.3f%% (%d of %d spam)\n", 100*r.FNRate, r.FN, r.Spam)
	fmt.Fprintf(w, "as deployed:       FP %d, FN %d (silent, so no tag, until min_ham/min_spam)\n", r.GatedFP, r.GatedFN)
	fp, fn, h, sp := r.At(0.5, 0)
	fmt.Fprintf(w, "at p>=0.50:        FP %.3f%% (%d), FN %.3f%% (%d) (for reference)\n", pct(fp, h), fp, pct(fn, sp), fn)
	half := len(r.Scored) / 2
	fp, fn, h, sp = r.At(r.threshold, half)
	fp2, fn2, _, _ := r.At(0.5, half)
	fmt.Fprintf(w, "second half:       FP %.3f%% (%d/%d), FN %.3f%% (%d/%d) at %.2f; FP %d, FN %d at 0.50\n", pct(fp, h), fp, h, pct(fn, sp), fn, sp, r.threshold, fp2, fn2)
	fn, sp = r.FNAtFP(0.001, 0)
	fn2, sp2 := r.FNAtFP(0.001, half)
	fmt.Fprintf(w, "FN at FP<=0.1%%:    %.2f%% (%d/%d) best threshold, whole stream; %.2f%% (%d/%d) second half\n", pct(fn, sp), fn, sp, pct(fn2, sp2), fn2, sp2)
	fmt.Fprintf(w, "classify:          %.0f msgs/s (%d msgs)\n", r.ClassifyRate(), r.Classified)
	fmt.Fprintf(w, "learn:             %.0f msgs/s (%d msgs)\n", r.LearnRate(), r.Learned)
	fmt.Fprintf(w, "model size:        %d keys\n", r.ModelKeys)
}
