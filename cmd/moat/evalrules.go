package main

import (
	"fmt"
	"io"
	"log/slog"

	"moat.dev/moat/internal/check/bayes"
	rulescheck "moat.dev/moat/internal/check/rules"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/policy"
)

// gatewayTally is one FP/FN count of the content score at the tag score.
type gatewayTally struct{ fp, fn, ham, spam int }

func (g gatewayTally) String() string {
	return fmt.Sprintf("FP %.3f%% (%d of %d ham), FN %.3f%% (%d of %d spam)",
		pct(g.fp, g.ham), g.fp, g.ham, pct(g.fn, g.spam), g.fn, g.spam)
}

func pct(n, d int) float64 {
	if d == 0 {
		return 0
	}
	return 100 * float64(n) / float64(d)
}

// reportWithRules scores every evaluated message the way the gateway's
// content layer does with the shipped rules and default policy: rules
// points plus the bayes check's points (none while the model is silent,
// before min_ham/min_spam), tagged at the default tag score. It prints
// that next to the rules alone, so the classifier's share is visible.
func reportWithRules(w io.Writer, items []classify.Item, res *classify.EvalResult) error {
	rc, err := rulescheck.New(rulescheck.DefaultConfig(), rulescheck.Deps{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	data := make(map[string][]byte, len(items))
	for _, it := range items {
		data[it.Name] = it.Data
	}
	tag := policy.Default().TagScore
	maxPts := bayes.DefaultConfig().MaxPoints
	var both, alone, half gatewayTally
	for i, s := range res.Scored {
		r := 0.0
		for _, y := range rc.Evaluate(message.ParseBytes(data[s.Name], message.DefaultLimits()), nil).Symbols {
			r += y.Score
		}
		b := 0.0
		if s.Trained {
			b = bayes.SymbolScaled(s.Prob, maxPts).Score
		}
		count := func(g *gatewayTally, score float64) {
			if s.Label == classify.Spam {
				g.spam++
				if score < tag {
					g.fn++
				}
			} else {
				g.ham++
				if score >= tag {
					g.fp++
				}
			}
		}
		count(&both, r+b)
		count(&alone, r)
		if i >= len(res.Scored)/2 {
			count(&half, r+b)
		}
	}
	fmt.Fprintf(w, "gateway content score (shipped rules + bayes points, tag at %.1f, as deployed):\n", tag)
	fmt.Fprintf(w, "  rules + bayes:   %s\n", both)
	fmt.Fprintf(w, "  second half:     %s\n", half)
	fmt.Fprintf(w, "  rules alone:     %s\n", alone)
	return nil
}
