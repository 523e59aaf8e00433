//go:build exp

package classify

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"moat.dev/moat/internal/message"
)

type expVariant struct {
	name string
	cfg  func(*Config)
	tune func(*Classifier)
}

var expVariants []expVariant

func expMetrics(sc []Scored) string {
	var nh, ns int
	for _, s := range sc {
		if s.Label == Spam {
			ns++
		} else {
			nh++
		}
	}
	at := func(thr float64, from int) (int, int) {
		fp, fn := 0, 0
		for _, s := range sc[from:] {
			if s.Label == Ham && s.Prob >= thr {
				fp++
			}
			if s.Label == Spam && s.Prob < thr {
				fn++
			}
		}
		return fp, fn
	}
	// FN at the lowest threshold with FP <= 2; FP at highest threshold with FN <= 15
	hams := []float64{}
	spams := []float64{}
	for _, s := range sc {
		if s.Label == Ham {
			hams = append(hams, s.Prob)
		} else {
			spams = append(spams, s.Prob)
		}
	}
	sort.Float64s(hams)
	sort.Float64s(spams)
	thrFP := hams[len(hams)-3] // 3rd highest ham: threshold just above it -> FP<=2
	fnAt := 0
	for _, p := range spams {
		if p <= thrFP {
			fnAt++
		}
	}
	thrFN := spams[15] // 16th lowest spam: threshold at it -> FN=15
	fpAt := 0
	for _, p := range hams {
		if p >= thrFN {
			fpAt++
		}
	}
	f5, n5 := at(0.5, 0)
	f9, n9 := at(0.9, 0)
	f99, n99 := at(0.99, 0)
	h5, hn5 := at(0.5, len(sc)/2)
	return fmt.Sprintf("1-ROCA %.4f | .5 FP%2d FN%2d | .9 FP%2d FN%3d | .99 FP%d FN%3d | 2nd-half .5 FP%d FN%d | FN@FP<=2 %3d | FP@FN<=15 %2d",
		(1-AUC(sc))*100, f5, n5, f9, n9, f99, n99, h5, hn5, fnAt, fpAt)
}

func TestExp(t *testing.T) {
	var items []Item
	if err := ReadSource(corpusPath, func(it Item) error { items = append(items, it); return nil }); err != nil {
		t.Fatal(err)
	}
	parsed := map[string]*message.Message{}
	for _, it := range items {
		parsed[it.Name] = message.ParseBytes(it.Data, message.DefaultLimits())
	}
	only := os.Getenv("EXP")
	seeds := []uint64{1, 2, 3}
	for _, v := range expVariants {
		if only != "" && !strings.Contains(","+only+",", ","+v.name+",") {
			continue
		}
		for _, seed := range seeds {
			order := OnlineOrder(items, seed)
			cfg := DefaultConfig()
			if v.cfg != nil {
				v.cfg(&cfg)
			}
			c, err := New(cfg, NewMemStore())
			if err != nil {
				t.Fatal(err)
			}
			if v.tune != nil {
				v.tune(c)
			}
			ctx := context.Background()
			var sc []Scored
			for _, it := range order {
				m := parsed[it.Name]
				r, err := c.Classify(ctx, "", m, false)
				if err != nil {
					t.Fatal(err)
				}
				sc = append(sc, Scored{Name: it.Name, Label: it.Label, Prob: r.Prob})
				if _, err := c.Learn(ctx, "", m, it.Label); err != nil {
					t.Fatal(err)
				}
			}
			fmt.Printf("%-22s s%d %s\n", v.name, seed, expMetrics(sc))
		}
	}
}

func init() {
	expVariants = []expVariant{
		{name: "base"},
		{name: "d1", tune: func(c *Classifier) { c.alg.(*logreg).delta = 1 }},
		{name: "d1e1", cfg: func(c *Config) { c.LearningRate = 1 }, tune: func(c *Classifier) { c.alg.(*logreg).delta = 1 }},
		{name: "d.1", tune: func(c *Classifier) { c.alg.(*logreg).delta = .1 }},
		{name: "d1tone", cfg: func(c *Config) { c.TrainMode = "on-error" }, tune: func(c *Classifier) { c.alg.(*logreg).delta = 1 }},
		{name: "steps3", tune: func(c *Classifier) { c.expSteps = 3 }},
		{name: "steps5", tune: func(c *Classifier) { c.expSteps = 5 }},
		{name: "hamw2", tune: func(c *Classifier) { c.alg.(*logreg).hamW = 2 }},
		{name: "hamw4", tune: func(c *Classifier) { c.alg.(*logreg).hamW = 4 }},
		{name: "h3t3", tune: func(c *Classifier) { c.fs.expHdr, c.fs.expText = 3000, 3000 }},
		{name: "h2t2", tune: func(c *Classifier) { c.fs.expHdr, c.fs.expText = 2000, 2000 }},
		{name: "h1.5t3", tune: func(c *Classifier) { c.fs.expHdr, c.fs.expText = 1500, 3000 }},
		{name: "h8t3", tune: func(c *Classifier) { c.fs.expHdr, c.fs.expText = 8000, 3000 }},
		{name: "sgdn0.3", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 0.3 }},
		{name: "sgdn1", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 1 }},
		{name: "sgdn3", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 3 }},
		{name: "sgdn10", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 10 }},
		{name: "sgd.002", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 0.002 }, tune: func(c *Classifier) { c.alg.(*logreg).noNorm = true }},
		{name: "sgd.02", cfg: func(c *Config) { c.Adaptive = false; c.LearningRate = 0.02 }, tune: func(c *Classifier) { c.alg.(*logreg).noNorm = true }},
		{name: "ada.02nn", cfg: func(c *Config) { c.LearningRate = 0.02 }, tune: func(c *Classifier) { c.alg.(*logreg).noNorm = true }},
		{name: "tone", cfg: func(c *Config) { c.TrainMode = "on-error" }},
		{name: "ada0.1", cfg: func(c *Config) { c.LearningRate = 0.1 }},
		{name: "ada1", cfg: func(c *Config) { c.LearningRate = 1 }},
		{name: "gw", cfg: func(c *Config) { c.Features = "grams+words" }},
	}
}
