// Package bayes is the statistical-classifier check: it scores the message
// with internal/classify and maps the spam probability to points on a
// smooth scale (BAYES_00 -2 ... BAYES_95 +5, BAYES_999 +5.5). It stays silent until the
// model has learned min_ham and min_spam messages.
package bayes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/reports"
	"moat.dev/moat/internal/verdict"
)

// Config is the bayes check's configuration.
type Config struct {
	// Classifier holds the model settings (algorithm, min_ham, min_spam, ...).
	Classifier classify.Config `yaml:"classifier"`
	// PerUser: when a transaction has exactly one recipient, use that
	// recipient's personal model (once it has min_user_train lessons).
	PerUser bool `yaml:"per_user"`
	// MaxPoints is the score at probability 1 (BAYES_999); the scale is
	// stretched proportionally. Default 5.5.
	MaxPoints float64 `yaml:"max_points"`
	// Autolearn: learning from the mail flow by itself (autolearn.go).
	Autolearn Autolearn `yaml:"autolearn"`
	// Reports: the learning addresses people forward spam and
	// wrongly tagged mail to (package reports).
	Reports reports.Config `yaml:"reports"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Classifier: classify.DefaultConfig(), PerUser: true, MaxPoints: 5.5, Autolearn: DefaultAutolearn(), Reports: reports.DefaultConfig()}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if err := c.Classifier.Validate(); err != nil {
		return fmt.Errorf("classifier.%w", err)
	}
	if c.MaxPoints < 0 || c.MaxPoints > 50 {
		return errors.New("max_points: must be between 0 and 50")
	}
	if err := c.Autolearn.validate(); err != nil {
		return err
	}
	if err := c.Reports.Validate(); err != nil {
		return fmt.Errorf("reports.%w", err)
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Store      classify.TokenStore   // required: the model store (classify.NewSQLStore over the store's DB)
	Log        *slog.Logger          // required
	Registerer prometheus.Registerer // optional
	Limits     message.Limits        // zero = message.DefaultLimits()
}

// Check is the bayes DataChecker.
type Check struct {
	cfg   Config
	c     *classify.Classifier
	log   *slog.Logger
	lim   message.Limits
	count *prometheus.CounterVec
	auto  *autolearner // nil when autolearn is off
}

var _ pipeline.DataChecker = (*Check)(nil)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Log == nil {
		return nil, errors.New("bayes: Store and Log are required")
	}
	c, err := classify.New(cfg.Classifier, deps.Store)
	if err != nil {
		return nil, err
	}
	lim := deps.Limits
	if lim.MaxParts == 0 {
		lim = message.DefaultLimits()
	}
	ch := &Check{cfg: cfg, c: c, log: deps.Log, lim: lim}
	ch.count = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_bayes_messages_total",
		Help: "Messages scored by the statistical classifier, by symbol (SILENT while untrained, ERROR on store failure).",
	}, []string{"symbol"})
	learned := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_bayes_autolearn_total",
		Help: "Autolearn lessons by label and result (learned, known: learned before, rate: over max_rate, dropped: queue full, error).",
	}, []string{"label", "result"})
	if deps.Registerer != nil {
		for _, col := range []prometheus.Collector{ch.count, learned} {
			if err := deps.Registerer.Register(col); err != nil {
				return nil, err
			}
		}
	}
	if cfg.Autolearn.Enabled {
		ch.auto = newAutolearner(c, cfg.Autolearn, learned, deps.Log)
	}
	return ch, nil
}

// Classifier returns the underlying classifier (for learning from the
// quarantine UI: release = ham lesson, report = spam lesson).
func (c *Check) Classifier() *classify.Classifier { return c.c }

// Close stops autolearn after the queued lessons are learned.
func (c *Check) Close() error {
	if c.auto != nil {
		c.auto.close()
	}
	return nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return "bayes" }

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, pm *pipeline.Message) verdict.Result {
	m, err := shared.Parse(pm, c.lim)
	if err != nil {
		c.count.WithLabelValues("ERROR").Inc()
		return verdict.Result{Err: fmt.Errorf("bayes: read message: %w", err)}
	}
	user := ""
	if c.cfg.PerUser && tx != nil && len(tx.Rcpts) == 1 {
		user = tx.Rcpts[0].Addr.String()
	}
	r, err := c.c.Classify(ctx, user, m, false)
	if err != nil {
		c.count.WithLabelValues("ERROR").Inc()
		return verdict.Result{Err: fmt.Errorf("bayes: %w", err)}
	}
	if !r.Trained {
		c.count.WithLabelValues("SILENT").Inc()
		return verdict.Result{}
	}
	sym := SymbolScaled(r.Prob, c.cfg.MaxPoints)
	sym.Detail = fmt.Sprintf("p=%.4f model=%s ham=%d spam=%d", r.Prob, r.Scope, r.Ham, r.Spam)
	c.count.WithLabelValues(sym.Name).Inc()
	return verdict.Result{Symbols: []verdict.Symbol{sym}}
}

// knots of the probability → points scale (piecewise linear, monotone).
var knots = [][2]float64{
	{0, -2}, {0.01, -1.5}, {0.05, -0.8}, {0.2, -0.2}, {0.4, 0}, {0.6, 0.5},
	{0.8, 1.5}, {0.9, 3}, {classify.TagProb, 5}, {0.99, 5.2}, {0.999, 5.3}, {1, 5.5},
}

// names of the buckets, SpamAssassin style: the largest bound <= p.
var buckets = []struct {
	min  float64
	name string
}{
	{0.999, "BAYES_999"}, {0.99, "BAYES_99"}, {classify.TagProb, "BAYES_95"}, {0.8, "BAYES_80"}, {0.6, "BAYES_60"},
	{0.4, "BAYES_50"}, {0.2, "BAYES_40"}, {0.05, "BAYES_20"}, {0.01, "BAYES_05"}, {0, "BAYES_00"},
}

// Symbol maps a spam probability to its symbol and points on the default
// scale (max 5.5).
func Symbol(p float64) verdict.Symbol { return SymbolScaled(p, 5.5) }

// SymbolScaled is Symbol with the positive side stretched so that p=1
// gives maxPoints.
func SymbolScaled(p, maxPoints float64) verdict.Symbol {
	if p < 0 || p != p {
		p = 0
	}
	if p > 1 {
		p = 1
	}
	pts := 0.0
	for i := 1; i < len(knots); i++ {
		if p <= knots[i][0] {
			a, b := knots[i-1], knots[i]
			pts = a[1] + (b[1]-a[1])*(p-a[0])/(b[0]-a[0])
			break
		}
	}
	if pts > 0 && maxPoints != 5.5 {
		pts *= maxPoints / 5.5
	}
	name := "BAYES_00"
	for _, b := range buckets {
		if p >= b.min {
			name = b.name
			break
		}
	}
	return verdict.Symbol{Name: name, Score: float64(int(pts*100+signHalf(pts))) / 100}
}

func signHalf(f float64) float64 {
	if f < 0 {
		return -0.5
	}
	return 0.5
}
