package main

import (
	"context"
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

// add counts one message of label l with content score score.
func (g *gatewayTally) add(l classify.Label, score, tag float64) {
	if l == classify.Spam {
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
		both.add(s.Label, r+b, tag)
		alone.add(s.Label, r, tag)
		if i >= len(res.Scored)/2 {
			half.add(s.Label, r+b, tag)
		}
	}
	fmt.Fprintf(w, "gateway content score (shipped rules + bayes points, tag at %.1f, as deployed):\n", tag)
	fmt.Fprintf(w, "  rules + bayes:   %s\n", both)
	fmt.Fprintf(w, "  second half:     %s\n", half)
	fmt.Fprintf(w, "  rules alone:     %s\n", alone)
	return nil
}

// evalAutolearn runs the stream without telling the model the true
// labels: each message is scored as the gateway's content layer scores
// it (shipped rules + bayes points once the model speaks), and the model
// learns only the lessons autolearn would take (bayes.AutolearnLabel
// over the rules' score, with the default thresholds). The rules stand in
// for every other layer here; in the gateway, DNS blocklists, reverse
// DNS and authentication results add to that score. It reports the
// lessons taken, how many were wrong, and the content score's FP/FN.
func evalAutolearn(ctx context.Context, w io.Writer, c *classify.Classifier, items []classify.Item) error {
	rc, err := rulescheck.New(rulescheck.DefaultConfig(), rulescheck.Deps{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	tag := policy.Default().TagScore
	bcfg := bayes.DefaultConfig()
	var both, half gatewayTally
	var lessons [3][3]int // [taken label][true label]
	var scored []classify.Scored
	for i, it := range items {
		m := message.ParseBytes(it.Data, message.DefaultLimits())
		r := 0.0
		gtube := false
		for _, y := range rc.Evaluate(m, nil).Symbols {
			r += y.Score
			gtube = gtube || y.Name == "GTUBE"
		}
		res, err := c.Classify(ctx, "", m, false)
		if err != nil {
			return err
		}
		scored = append(scored, classify.Scored{Name: it.Name, Label: it.Label, Prob: res.Prob, Trained: res.Trained})
		b := 0.0
		if res.Trained {
			b = bayes.SymbolScaled(res.Prob, bcfg.MaxPoints).Score
		}
		both.add(it.Label, r+b, tag)
		if i >= len(items)/2 {
			half.add(it.Label, r+b, tag)
		}
		label := bayes.AutolearnLabel(bcfg.Autolearn, r, bayes.Opinion{Spoke: res.Trained, Prob: res.Prob})
		if gtube || label == classify.Unknown {
			continue
		}
		lessons[label][it.Label]++
		if _, err := c.Learn(ctx, "", m, label); err != nil {
			return err
		}
	}
	a := bcfg.Autolearn
	fmt.Fprintf(w, "autolearn protocol: %d messages, no true labels; lessons where the shipped rules score <= %.1f (ham) or >= %.1f (spam)\n", len(items), a.HamMax, a.SpamMin)
	fmt.Fprintf(w, "  ham lessons:     %d (%d of them spam)\n", lessons[classify.Ham][classify.Ham]+lessons[classify.Ham][classify.Spam], lessons[classify.Ham][classify.Spam])
	fmt.Fprintf(w, "  spam lessons:    %d (%d of them ham)\n", lessons[classify.Spam][classify.Spam]+lessons[classify.Spam][classify.Ham], lessons[classify.Spam][classify.Ham])
	fmt.Fprintf(w, "  classifier:      1-ROCA%% %.4f over its own probabilities\n", (1-classify.AUC(scored))*100)
	fmt.Fprintf(w, "gateway content score (shipped rules + bayes points, tag at %.1f):\n", tag)
	fmt.Fprintf(w, "  rules + bayes:   %s\n", both)
	fmt.Fprintf(w, "  second half:     %s\n", half)
	return nil
}
