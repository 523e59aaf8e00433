// Package app wires Moat together: store, resolver, the ordered check
// table, the SMTP server, the queue and the relay, the HTTP endpoints. It
// owns the start and stop order and nothing else.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/check/greylist"
	"moat.dev/moat/internal/config"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/relay"
	"moat.dev/moat/internal/reports"
	"moat.dev/moat/internal/smtpd"
	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/sqlstore"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/users"
)

// App is a running Moat.
type App struct {
	cfg     *config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	store   store.Store
	domains *domainCache
	master  []byte
	queue   *queue.Queue
	relay   *relay.Relay
	smtp    *smtpd.Server
	mux     *http.ServeMux
	closers []io.Closer

	resolver   dnsx.Resolver
	clamav     *clamav.Check
	background []func(context.Context) // run for the life of the server

	tracker      *tracking.Tracker
	users        *users.Store
	quar         *quarantine.Store
	learner      quarantine.Learner
	reports      *reports.Reports
	webHandler   http.Handler
	bypass       *milter.Stats
	auditMetrics *audit.Metrics
	audit        auditState
}

// NewLogger builds the structured logger the config asks for.
func NewLogger(c config.LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// New builds every component; nothing listens until Run.
func New(ctx context.Context, cfg *config.Config) (a *App, err error) {
	a = &App{cfg: cfg, log: NewLogger(cfg.Log, os.Stderr), reg: prometheus.NewRegistry(), mux: http.NewServeMux()}
	defer func(a *App) { // a itself is nil once New returns nil, err
		if err != nil {
			a.close()
		}
	}(a)
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if a.master, err = passmark.LoadOrCreateMaster(cfg.Pass.SecretFile); err != nil {
		return nil, fmt.Errorf("pass.secret_file: %w", err)
	}
	st, err := sqlstore.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		return nil, err
	}
	a.store = st
	a.closers = append(a.closers, st)
	// Nodes sharing a PostgreSQL store start one at a time: the components
	// below create their tables.
	release, err := st.StartupLock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	// Message tracking: every log line carrying a queue_id is indexed.
	tr, err := tracking.New(ctx, cfg.Tracking, st.DB(), st.Driver(), a.log.With("component", "tracking"), a.reg)
	if err != nil {
		return nil, fmt.Errorf("tracking: %w", err)
	}
	a.tracker = tr
	a.closers = append(a.closers, tr)
	a.background = append(a.background, func(ctx context.Context) { tr.Start(ctx) })
	a.log = slog.New(tracking.Handler(a.log.Handler(), tr))
	if err := seed(ctx, st, cfg); err != nil {
		return nil, err
	}
	a.domains = newDomainCache(st, &cfg.Policy, 5*time.Second, a.log)
	if _, err := st.DB().ExecContext(ctx, greylist.Schema); err != nil {
		return nil, fmt.Errorf("store: greylist table: %w", err)
	}
	dc, err := dnsx.New(cfg.DNS, a.log.With("component", "dns"), a.reg)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	a.resolver = dc

	if a.relay, err = relay.New(cfg.Relay, a.route, a.log.With("component", "relay"), a.reg); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	a.closers = append(a.closers, a.relay)
	if a.queue, err = queue.Open(cfg.Queue, deliverer{a}, a.log.With("component", "queue"), a.reg); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	a.closers = append(a.closers, a.queue)

	checks, err := a.buildChecks(ctx)
	if err != nil {
		return nil, err
	}
	runner := pipeline.NewRunner(checks, a.domains.policy, cfg.CheckTimeout.D())
	if err := a.buildAdmin(ctx); err != nil {
		return nil, err
	}
	a.smtp, err = smtpd.New(cfg.SMTP, smtpd.Deps{
		Spool:      spoolAdapter{a.queue},
		Domains:    a.isCustomerDomain,
		Runner:     runner,
		Quarantine: a.hold,
		Log:        a.log.With("component", "smtpd"),
		Metrics:    a.reg,
		Reports:    a.reports,
		Thresholds: a.thresholds,
	})
	if err != nil {
		return nil, fmt.Errorf("smtp: %w", err)
	}
	a.mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	if cfg.HTTP.Pprof {
		a.mux.HandleFunc("/debug/pprof/", pprof.Index)
		a.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		a.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		a.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	a.mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	return a, nil
}

// seed writes the domains of the config file into the store.
func seed(ctx context.Context, st store.Store, cfg *config.Config) error {
	for i, dc := range cfg.Domains {
		d, err := dc.Domain()
		if err != nil {
			return fmt.Errorf("domains[%d]: %w", i, err)
		}
		if err := st.PutDomain(ctx, d); err != nil {
			return fmt.Errorf("store: seeding %s: %w", d.Name, err)
		}
		rcpts, err := dc.RecipientList()
		if err != nil {
			return fmt.Errorf("domains[%d]: %w", i, err)
		}
		for _, r := range rcpts {
			if err := st.PutRecipient(ctx, r); err != nil {
				return fmt.Errorf("store: seeding %s@%s: %w", r.Local, d.Name, err)
			}
		}
	}
	return nil
}

func (a *App) isCustomerDomain(ctx context.Context, domain string) (bool, error) {
	d, _, err := a.domains.get(ctx, domain)
	return d != nil, err
}

// route gives the relay a customer domain's backends and pass secret. A
// "dsn:" prefix marks a delivery status notification Moat generated: to a
// customer domain it goes to that domain's backends, elsewhere to the
// domain's MX hosts (the only mail Moat ever sends off its customer routes).
func (a *App) route(ctx context.Context, domain string) (*relay.Route, error) {
	if dom, ok := strings.CutPrefix(domain, dsnPrefix); ok {
		if d, _, err := a.domains.get(ctx, dom); err == nil && d != nil {
			domain = dom
		} else {
			return a.mxRoute(ctx, dom)
		}
	}
	d, _, err := a.domains.get(ctx, domain)
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, fmt.Errorf("%w: %s", relay.ErrNoRoute, domain)
	}
	r := &relay.Route{Domain: d.Name, TLS: d.TLS, MaxConns: d.MaxConns, PassSecret: passmark.DomainSecret(a.master, d.Name)}
	for _, b := range d.Backends {
		r.Backends = append(r.Backends, relay.Backend{Host: b.Host, Port: b.Port})
	}
	return r, nil
}

// Run serves until ctx is cancelled, then shuts down in order: stop
// accepting SMTP, let sessions finish, stop the queue, close the store.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, fn := range a.background {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}

	qctx, qcancel := context.WithCancel(context.Background())
	defer qcancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.queue.Run(qctx); err != nil && !errors.Is(err, context.Canceled) {
			errc <- fmt.Errorf("queue: %w", err)
		}
	}()

	var httpSrv *http.Server
	if a.cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", a.cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		httpSrv = &http.Server{Handler: a.mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("http: %w", err)
			}
		}()
		a.log.Info("http listening", "addr", ln.Addr().String())
	}

	var webSrv *http.Server
	if a.webHandler != nil {
		ln, err := net.Listen("tcp", a.cfg.Web.Listen)
		if err != nil {
			return fmt.Errorf("web.listen: %w", err)
		}
		webSrv = &http.Server{Handler: a.webHandler, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := webSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("web: %w", err)
			}
		}()
		a.log.Info("web UI listening", "addr", ln.Addr().String())
	}

	smtpErr := make(chan error, 1)
	go func() { smtpErr <- a.smtp.ListenAndServe(ctx) }()
	a.log.Info("moat started", "hostname", a.cfg.Hostname, "smtp", a.cfg.SMTP.Listen, "domains", len(a.cfg.Domains))

	var runErr error
	smtpDone := false
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	case runErr = <-smtpErr:
		smtpDone = true
		if runErr != nil {
			runErr = fmt.Errorf("smtp: %w", runErr)
		}
	}
	a.log.Info("shutting down")
	// The SMTP server drains its sessions when ctx ends; only then does the
	// queue stop, so every message accepted is committed first.
	cancel()
	if !smtpDone {
		<-smtpErr
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if httpSrv != nil {
		httpSrv.Shutdown(sctx)
	}
	if webSrv != nil {
		webSrv.Shutdown(sctx)
	}
	qcancel()
	wg.Wait()
	return runErr
}

func (a *App) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i].Close()
	}
	a.closers = nil
}

// thresholds are a recipient's own spam thresholds, kept with the
// quarantine's preferences.
func (a *App) thresholds(ctx context.Context, rcpt string) (policy.Thresholds, error) {
	if a.quar == nil {
		return policy.Thresholds{}, nil
	}
	return a.quar.Prefs.Thresholds(ctx, rcpt)
}

// spoolAdapter lets the SMTP server write into the queue.
type spoolAdapter struct{ q *queue.Queue }

func (s spoolAdapter) NewDraft() (smtpd.Draft, error) {
	d, err := s.q.NewDraft()
	if err != nil {
		return nil, err // a plain nil, not a typed nil pointer in the interface
	}
	return d, nil
}
