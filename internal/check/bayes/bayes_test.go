package bayes

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
)

func TestSymbolScale(t *testing.T) {
	cases := []struct {
		p    float64
		name string
		pts  float64
	}{
		{0, "BAYES_00", -2}, {0.005, "BAYES_00", -1.75}, {0.5, "BAYES_50", 0.25}, {0.95, "BAYES_95", 5}, {0.99, "BAYES_99", 5.2}, {0.9995, "BAYES_999", 5.4}, {1, "BAYES_999", 5.5},
	}
	for _, c := range cases {
		s := Symbol(c.p)
		if s.Name != c.name || s.Score != c.pts {
			t.Errorf("Symbol(%v) = %+v, want %s %v", c.p, s, c.name, c.pts)
		}
	}
	prev := -100.0
	for p := 0.0; p <= 1.0; p += 0.001 {
		if s := Symbol(p).Score; s < prev {
			t.Fatalf("not monotone at %v", p)
		} else {
			prev = s
		}
	}
}

func pmsg(raw string) *pipeline.Message {
	return &pipeline.Message{Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
}

func TestCheckSilentThenScores(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Classifier.MinHam, cfg.Classifier.MinSpam = 5, 5
	store := classify.NewMemStore()
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Deps{Store: store, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	spam := "From: promo@deals.example\r\nSubject: Cheap pills %d\r\n\r\nBuy cheap pills online, huge discount %d, click now!\r\n"
	ham := "From: alice@work.example\r\nSubject: Meeting notes %d\r\n\r\nHi team, the minutes of meeting %d are attached. Regards, Alice\r\n"
	ctx := context.Background()
	tx := &pipeline.Txn{}
	if r := c.CheckData(ctx, tx, pmsg(fmt.Sprintf(spam, 99, 99))); len(r.Symbols) != 0 || r.Err != nil {
		t.Fatalf("untrained check scored: %+v", r)
	}
	for i := 0; i < 6; i++ {
		for _, tmpl := range []struct {
			s string
			l classify.Label
		}{{spam, classify.Spam}, {ham, classify.Ham}} {
			m := message.ParseBytes([]byte(fmt.Sprintf(tmpl.s, i, i)), message.DefaultLimits())
			if _, err := c.Classifier().Learn(ctx, "", m, tmpl.l); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := c.CheckData(ctx, tx, pmsg(fmt.Sprintf(spam, 42, 42)))
	if len(r.Symbols) != 1 || r.Symbols[0].Score <= 0 || !strings.HasPrefix(r.Symbols[0].Name, "BAYES_") {
		t.Fatalf("spam: %+v", r)
	}
	r = c.CheckData(ctx, tx, pmsg(fmt.Sprintf(ham, 42, 42)))
	if len(r.Symbols) != 1 || r.Symbols[0].Score >= 0 {
		t.Fatalf("ham: %+v", r)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	silent := -1.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "moat_bayes_messages_total" && m.GetLabel()[0].GetValue() == "SILENT" {
				silent = m.GetCounter().GetValue()
			}
		}
	}
	if silent != 1 {
		t.Fatalf("SILENT count %v", silent)
	}
}

// TestDefaultThresholdIsTagPoint: the classifier's default threshold (the
// point moat eval and moat classify report) is where this check alone
// reaches the default policy's tag score, and no lower probability does.
func TestDefaultThresholdIsTagPoint(t *testing.T) {
	tag := policy.Default().TagScore
	thr := DefaultConfig().Classifier.Threshold
	if thr != classify.TagProb {
		t.Fatalf("default threshold %v, tag point %v", thr, classify.TagProb)
	}
	if s := Symbol(thr); s.Score < tag || s.Name != "BAYES_95" {
		t.Fatalf("Symbol(%v) = %+v: below the tag score %v", thr, s, tag)
	}
	if s := Symbol(thr - 0.001); s.Score >= tag {
		t.Fatalf("Symbol(%v) = %+v: tags below the threshold", thr-0.001, s)
	}
}
