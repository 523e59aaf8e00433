// Package rules is the content-rules check: it runs the shipped rules
// (GTUBE, header/body/URI heuristics) plus the site's local rules files over
// the decoded message and adds the scores of the rules that hit. Local
// files are re-read when their modification time changes (checked at most
// once per reload_interval) or when Reload is called (SIGHUP); a broken
// file keeps the previous rules in force and logs the file:line error.
package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	rl "moat.dev/moat/internal/rules"
	"moat.dev/moat/internal/verdict"
)

// Config is the rules check's configuration.
type Config struct {
	// LocalFiles are read after the shipped rules, in order; they may add
	// rules and override scores (score NAME 0 disables a shipped rule).
	LocalFiles []string `yaml:"local_files"`
	// ReloadInterval: how often local files' modification times are checked
	// (on the message path). 0 disables automatic reload (SIGHUP only).
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// DefaultConfig returns the defaults: shipped rules only, mtime check every 10s.
func DefaultConfig() Config { return Config{ReloadInterval: 10 * time.Second} }

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.ReloadInterval < 0 {
		return errors.New("reload_interval: must be >= 0")
	}
	for i, f := range c.LocalFiles {
		if f == "" {
			return fmt.Errorf("local_files[%d]: empty path", i)
		}
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Log        *slog.Logger          // required
	Registerer prometheus.Registerer // optional
	Limits     message.Limits        // zero = message.DefaultLimits()
}

// Check is the rules DataChecker (tier 2: meta rules may use other checks' symbols).
type Check struct {
	cfg  Config
	log  *slog.Logger
	lim  message.Limits
	set  atomic.Pointer[rl.Set]
	hits *prometheus.CounterVec
	errs prometheus.Counter

	mu        sync.Mutex
	mtimes    []time.Time
	lastCheck time.Time
}

var (
	_ pipeline.DataChecker = (*Check)(nil)
	_ pipeline.Tier2       = (*Check)(nil)
)

// New compiles the rules; a broken rules file is an error naming file:line.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		return nil, errors.New("rules: Log is required")
	}
	c := &Check{cfg: cfg, log: deps.Log, lim: deps.Limits}
	if c.lim.MaxParts == 0 {
		c.lim = message.DefaultLimits()
	}
	c.hits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_rules_hits_total", Help: "Content rule hits by rule name."}, []string{"rule"})
	c.errs = prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_rules_reload_errors_total", Help: "Failed reloads of local rules files."})
	if deps.Registerer != nil {
		for _, col := range []prometheus.Collector{c.hits, c.errs} {
			if err := deps.Registerer.Register(col); err != nil {
				return nil, err
			}
		}
	}
	set, mt, err := c.load()
	if err != nil {
		return nil, err
	}
	c.set.Store(set)
	c.mtimes = mt
	c.lastCheck = time.Now()
	return c, nil
}

func (c *Check) load() (*rl.Set, []time.Time, error) {
	mt := make([]time.Time, len(c.cfg.LocalFiles))
	for i, f := range c.cfg.LocalFiles {
		st, err := os.Stat(f)
		if err != nil {
			return nil, nil, err
		}
		mt[i] = st.ModTime()
	}
	s, err := rl.Load(c.cfg.LocalFiles...)
	return s, mt, err
}

// Reload re-reads the rules now (SIGHUP). On error the old rules stay.
func (c *Check) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloadLocked()
}

func (c *Check) reloadLocked() error {
	set, mt, err := c.load()
	c.lastCheck = time.Now()
	if err != nil {
		c.errs.Inc()
		c.log.Error("rules: reload failed, keeping previous rules", "err", err)
		if mt != nil {
			c.mtimes = mt // do not retry the same broken file on every message
		}
		return err
	}
	c.set.Store(set)
	c.mtimes = mt
	c.log.Info("rules: reloaded", "rules", len(set.Rules), "files", len(c.cfg.LocalFiles))
	return nil
}

// maybeReload checks mtimes at most once per ReloadInterval.
func (c *Check) maybeReload() {
	if c.cfg.ReloadInterval <= 0 || len(c.cfg.LocalFiles) == 0 {
		return
	}
	if !c.mu.TryLock() {
		return // someone else is checking
	}
	defer c.mu.Unlock()
	if time.Since(c.lastCheck) < c.cfg.ReloadInterval {
		return
	}
	c.lastCheck = time.Now()
	for i, f := range c.cfg.LocalFiles {
		st, err := os.Stat(f)
		if err != nil || !st.ModTime().Equal(c.mtimes[i]) {
			c.reloadLocked()
			return
		}
	}
}

// Set returns the rules in force.
func (c *Check) Set() *rl.Set { return c.set.Load() }

// Name implements pipeline.Check.
func (c *Check) Name() string { return "rules" }

// Tier2 marks the check as running after the independent DATA checks.
func (c *Check) Tier2() {}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, pm *pipeline.Message) verdict.Result {
	c.maybeReload()
	m, err := shared.Parse(pm, c.lim)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("rules: read message: %w", err)}
	}
	var extra map[string]bool
	if tx != nil && tx.Report != nil {
		extra = map[string]bool{}
		for _, s := range tx.Report.Symbols() {
			extra[s.Name] = true
		}
	}
	if tx != nil && tx.Conn != nil && tx.Conn.Report != nil {
		if extra == nil {
			extra = map[string]bool{}
		}
		for _, s := range tx.Conn.Report.Symbols() {
			extra[s.Name] = true
		}
	}
	return c.Evaluate(m, extra)
}

// Evaluate runs the rules over a decoded message (moat classify uses it too).
func (c *Check) Evaluate(m *message.Message, extra map[string]bool) verdict.Result {
	hits := c.set.Load().Match(rl.TargetFrom(m), extra)
	var res verdict.Result
	for _, h := range hits {
		c.hits.WithLabelValues(h.Name).Inc()
		res.Symbols = append(res.Symbols, verdict.Symbol{Name: h.Name, Score: h.Score, Detail: h.Describe})
	}
	return res
}
