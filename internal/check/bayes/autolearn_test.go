package bayes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

func TestAutolearnLabel(t *testing.T) {
	a := DefaultAutolearn()
	silent := Opinion{}
	cases := []struct {
		other float64
		op    Opinion
		want  classify.Label
	}{
		{0, silent, classify.Ham},
		{0.1, silent, classify.Ham},
		{-3, silent, classify.Ham},
		{0.2, silent, classify.Unknown},
		{11.9, silent, classify.Unknown},
		{12, silent, classify.Spam},
		{30, silent, classify.Spam},
		{0, Opinion{Spoke: true, Prob: 0.3}, classify.Ham},
		{0, Opinion{Spoke: true, Prob: 0.05}, classify.Unknown},   // sure already: no lesson
		{15, Opinion{Spoke: true, Prob: 0.995}, classify.Unknown}, // sure already
		{0, Opinion{Spoke: true, Prob: 0.85}, classify.Unknown},   // classifier says spam: a person decides
		{15, Opinion{Spoke: true, Prob: 0.6}, classify.Spam},
		{15, Opinion{Spoke: true, Prob: 0.1}, classify.Unknown}, // classifier says ham
	}
	for _, c := range cases {
		if got := AutolearnLabel(a, c.other, c.op); got != c.want {
			t.Errorf("AutolearnLabel(%v, %+v) = %v, want %v", c.other, c.op, got, c.want)
		}
	}
	a.Enabled = false
	if got := AutolearnLabel(a, 50, silent); got != classify.Unknown {
		t.Errorf("disabled: %v", got)
	}
}

func TestAutolearnValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Autolearn.SpamMin = 0
	if err := cfg.Validate(); err == nil {
		t.Fatal("spam_min below ham_max accepted")
	}
	cfg = DefaultConfig()
	cfg.Autolearn.Queue = 0
	if err := cfg.Validate(); err == nil {
		t.Fatal("queue 0 accepted")
	}
	cfg.Autolearn.Queue, cfg.Autolearn.MaxRate = 10, 0
	if err := cfg.Validate(); err == nil {
		t.Fatal("max_rate 0 accepted")
	}
	cfg.Autolearn.Enabled = false
	if err := cfg.Validate(); err != nil {
		t.Fatalf("disabled autolearn with a bad queue must not matter: %v", err)
	}
}

// TestDecidedLearns runs the observer over decisions as the runner makes
// them, against a real SQLite model, and checks which lessons the site
// model received.
func TestDecidedLearns(t *testing.T) {
	ctx := context.Background()
	db, err := classify.OpenSQLite(filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := classify.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(DefaultConfig(), Deps{Store: classify.NewSQLStore(db), Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	msg := func(i int) *pipeline.Message {
		return pmsg(fmt.Sprintf("From: a%d@example.org\r\nSubject: note %d\r\n\r\nbody number %d of the test\r\n", i, i, i))
	}
	tx := &pipeline.Txn{Conn: &pipeline.Conn{}}
	auth := &pipeline.Txn{Conn: &pipeline.Conn{AuthUser: "alice"}}
	sym := func(name string, score float64) verdict.Result {
		return verdict.Result{Check: "rules", Symbols: []verdict.Symbol{{Name: name, Score: score}}}
	}
	cases := []struct {
		name    string
		tx      *pipeline.Txn
		results []verdict.Result
		want    string
	}{
		{"clean", tx, nil, "ham"},
		{"blatant", tx, []verdict.Result{sym("A", 8), sym("B", 6)}, "spam"},
		{"blatant but the classifier says ham", tx, []verdict.Result{sym("A", 14), {Check: "bayes", Symbols: []verdict.Symbol{Symbol(0.02)}}}, "no"},
		{"middle", tx, []verdict.Result{sym("A", 4)}, "no"},
		{"GTUBE", tx, []verdict.Result{sym("GTUBE", 1000)}, "no"},
		{"allowlisted", tx, []verdict.Result{sym("ALLOWLIST_FROM", -20)}, "no"},
		{"check failed", tx, []verdict.Result{{Check: "dkim", Err: errors.New("dns down")}}, "no"},
		{"virus", tx, []verdict.Result{{Check: "clamav", Hard: &verdict.Verdict{Action: verdict.Reject}}}, "no"},
		{"authenticated", auth, nil, "no"},
		{"over 512 KiB", tx, nil, "no"},
	}
	for i, cs := range cases {
		dec := pol.Decide(cs.results, policy.Content)
		pm := msg(i)
		if cs.name == "over 512 KiB" {
			pm.Size = 512<<10 + 1
		}
		if got := c.Decided(ctx, cs.tx, pm, cs.results, dec); got != cs.want {
			t.Errorf("%s: Decided = %q, want %q", cs.name, got, cs.want)
		}
	}
	// The same clean message again: known already, counted once.
	dec := pol.Decide(nil, policy.Content)
	if got := c.Decided(ctx, tx, msg(0), nil, dec); got != "ham" {
		t.Fatalf("repeat: %q", got)
	}
	c.Close() // drains the queue
	tot, err := c.Classifier().Totals(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if tot.Ham != 1 || tot.Spam != 1 {
		t.Fatalf("site model learned ham %d, spam %d; want 1 and 1", tot.Ham, tot.Spam)
	}
	counts := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "moat_bayes_autolearn_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			counts[m.GetLabel()[0].GetValue()+"/"+m.GetLabel()[1].GetValue()] = m.GetCounter().GetValue()
		}
	}
	if counts["ham/learned"] != 1 || counts["ham/known"] != 1 || counts["spam/learned"] != 1 {
		t.Fatalf("metrics %v", counts)
	}

	// A person's correction moves the autolearned site lesson: the blatant
	// message (index 1) released as ham by its recipient.
	raw, _ := msg(1).Open()
	b, _ := io.ReadAll(raw)
	m := message.ParseBytes(b, message.DefaultLimits())
	if _, err := c.Classifier().Correct(ctx, "bob@example.com", m, classify.Ham); err != nil {
		t.Fatal(err)
	}
	if tot, _ = c.Classifier().Totals(ctx, ""); tot.Ham != 2 || tot.Spam != 0 {
		t.Fatalf("after the correction the site model has ham %d, spam %d; want 2 and 0", tot.Ham, tot.Spam)
	}
}

// TestDecidedQueueFull: a full queue drops the lesson instead of blocking
// the session, and X-Spam-Status then says autolearn=no.
func TestDecidedQueueFull(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Autolearn.Enabled = false
	c, err := New(cfg, Deps{Store: classify.NewMemStore(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c.cfg.Autolearn = DefaultAutolearn()
	// A learner that takes nothing: its one-slot queue is full.
	count := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"label", "result"})
	c.auto = &autolearner{c: c.c, q: make(chan lesson, 1), done: make(chan struct{}), count: count}
	c.auto.q <- lesson{}
	tx := &pipeline.Txn{Conn: &pipeline.Conn{}}
	if got := c.Decided(context.Background(), tx, pmsg("Subject: a\r\n\r\nb\r\n"), nil, policy.Default().Decide(nil, policy.Content)); got != "no" {
		t.Fatalf("full queue: Decided = %q, want no", got)
	}
	var m dto.Metric
	if err := count.WithLabelValues("ham", "dropped").Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		t.Fatalf("dropped = %v (%v)", m.GetCounter().GetValue(), err)
	}
}

func TestRateLimiter(t *testing.T) {
	r := newRateLimiter(2, 4)
	t0 := time.Unix(1000, 0)
	n := 0
	for i := 0; i < 10; i++ {
		if r.allow(t0) {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("burst: %d allowed, want 4", n)
	}
	if r.allow(t0.Add(100 * time.Millisecond)) {
		t.Fatal("allowed before a token was earned")
	}
	if !r.allow(t0.Add(600 * time.Millisecond)) {
		t.Fatal("not allowed after a token was earned")
	}
	if n := func() (n int) {
		for i := 0; i < 10; i++ {
			if r.allow(t0.Add(time.Hour)) {
				n++
			}
		}
		return
	}(); n != 4 {
		t.Fatalf("after an hour: %d allowed, want the burst of 4", n)
	}
}
