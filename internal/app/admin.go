package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"sync"
	"time"

	"moat.dev/moat/internal/api"
	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/check/lists"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/smtpd"
	"moat.dev/moat/internal/users"
	"moat.dev/moat/internal/web"
)

// buildAdmin sets up the quarantine, the web UI, the admin API, the bypass
// report endpoint and the scheduled leakage audit.
func (a *App) buildAdmin(ctx context.Context) error {
	cfg := a.cfg
	db := a.store.DB()
	if err := users.MigrateDriver(ctx, db, a.store.Driver()); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	a.users = users.NewDriver(db, a.store.Driver())
	var scanner quarantine.Scanner
	if a.clamav != nil {
		scanner = clamScanner{a}
	}
	q, err := quarantine.New(cfg.Quarantine, quarantine.Deps{
		DB: db, Driver: a.store.Driver(), Enqueuer: a.queue, Scanner: scanner, Learner: a.learner,
		Logger: a.log.With("component", "quarantine"), Registerer: a.reg,
	})
	if err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	a.quar = q
	a.closers = append(a.closers, q)
	a.background = append(a.background, func(ctx context.Context) { q.Run(ctx) })

	stats, err := milter.NewStats(a.reg)
	if err != nil {
		return err
	}
	a.bypass = stats
	if cfg.Web.Listen != "" {
		deps := web.Deps{Quarantine: q, Users: a.users, Logger: a.log.With("component", "web"), Registerer: a.reg,
			Bypass: stats.Domains, BypassSince: time.Now(), Tracking: a.tracker}
		if cfg.Audit.Every > 0 && (len(cfg.Audit.Gateway.Hostnames) > 0 || len(cfg.Audit.Gateway.Addresses) > 0) {
			deps.Audit = a.latestAudit
		}
		h, err := web.New(cfg.Web, deps)
		if err != nil {
			return fmt.Errorf("web: %w", err)
		}
		a.webHandler = h
	}
	sp := cfg.Policy
	deps := api.Deps{Store: a.store, Queue: a.queue, Tracker: a.tracker, SitePolicy: &sp,
		Log: a.log.With("component", "api"), Registerer: a.reg}
	if a.quar != nil {
		deps.Settings = a.quar.Prefs
	}
	apiH, err := api.New(cfg.API, deps)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	a.mux.Handle(api.Prefix, apiH)

	// Continuous bypass monitoring: backends running `moat milter` report
	// every message that reached them without a valid pass mark.
	a.mux.Handle("/milter/report", milter.ReportHandler(a.domainSecret, stats.Record))

	if cfg.Audit.Every > 0 {
		if len(cfg.Audit.Gateway.Hostnames) == 0 && len(cfg.Audit.Gateway.Addresses) == 0 {
			a.log.Warn("scheduled leakage audit off: set gateway.hostnames/addresses (Moat's own MX names and IPs)")
		} else {
			m, err := audit.NewMetrics(a.reg)
			if err != nil {
				return err
			}
			a.auditMetrics = m
			a.background = append(a.background, a.auditLoop)
			a.mux.HandleFunc("/audit", a.serveAudit)
		}
	}
	return nil
}

// domainSecret is a customer domain's pass-mark secret, nil for others.
func (a *App) domainSecret(domain string) []byte {
	d, _, err := a.domains.get(context.Background(), domain)
	if err != nil || d == nil {
		return nil
	}
	return passmark.DomainSecret(a.master, d.Name)
}

// hold is the SMTP server's quarantine hook: the message is durable in the
// quarantine before the session answers.
func (a *App) hold(ctx context.Context, d smtpd.Draft, env *queue.Envelope, dec policy.Decision) error {
	hr, err := d.Open()
	if err != nil {
		return err
	}
	hdr, _ := textproto.NewReader(bufio.NewReader(io.LimitReader(hr, 256<<10))).ReadMIMEHeader()
	hr.Close()
	r, err := d.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	dec2 := new(mime.WordDecoder)
	decode := func(v string) string {
		if out, err := dec2.DecodeHeader(v); err == nil {
			return out
		}
		return v
	}
	e := &quarantine.Entry{
		Subject: decode(hdr.Get("Subject")), HeaderFrom: decode(hdr.Get("From")),
		Received: env.Received, From: env.From, Client: env.Client, Size: env.Size,
		Score: dec.Score, Action: dec.Action.String(), Reasons: dec.Counted,
		Refused: dec.Reply.Code/100 == 5, Prepend: env.Prepend,
	}
	if e.Received.IsZero() {
		e.Received = time.Now()
	}
	for _, rc := range env.Rcpts {
		e.Rcpts = append(e.Rcpts, rc.Addr)
		if e.Domain == "" {
			e.Domain = rc.Domain
		}
	}
	id, err := a.quar.Hold(ctx, e, r)
	if err != nil {
		return err
	}
	d.Abort() // the quarantine has its own durable copy
	a.log.Info("quarantined", "queue_id", env.ID, "quarantine_id", id, "score", dec.Score, "refused", e.Refused)
	return nil
}

// clamScanner lets a quarantine release be scanned again.
type clamScanner struct{ a *App }

// Scan re-scans a message being released as the clamav layer would: not
// at all when the site turned the layer off, and with clamd down the
// release goes ahead (logged) when checks.clamav.fail_open is set, as
// mail does at DATA.
func (s clamScanner) Scan(ctx context.Context, r io.Reader) (bool, string, error) {
	if s.a.cfg.Policy.Layer(clamav.Name).Mode == policy.ModeOff {
		return false, "", nil
	}
	res, err := s.a.clamav.Scan(ctx, r)
	if err != nil {
		if s.a.cfg.Checks.ClamAV.FailOpen {
			s.a.log.Warn("quarantine release not re-scanned: virus scanner unavailable (fail_open)", "err", err)
			return false, "", nil
		}
		return false, "", err
	}
	return res.Status == clamav.Infected, res.Signature, nil
}

type auditState struct {
	mu     sync.Mutex
	last   *audit.Report
	lastAt time.Time
	err    string
}

// auditLoop audits every customer domain now and then, exporting the
// findings as metrics and at /audit.
func (a *App) auditLoop(ctx context.Context) {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.runAudit(ctx)
		t.Reset(a.cfg.Audit.Every.D())
	}
}

func (a *App) runAudit(ctx context.Context) {
	ds, err := a.store.Domains(ctx)
	if err != nil {
		a.log.Error("audit: listing domains", "err", err)
		return
	}
	cfg := a.cfg.Audit.Config
	cfg.Routes = map[string]audit.Route{}
	var names []string
	for _, d := range ds {
		names = append(names, d.Name)
		r := audit.Route{}
		for _, b := range d.Backends {
			r.Backends = append(r.Backends, audit.Backend{Host: b.Host, Port: b.Port})
		}
		cfg.Routes[d.Name] = r
	}
	if len(names) == 0 {
		return
	}
	rep, err := audit.Run(ctx, cfg, names)
	a.audit.mu.Lock()
	defer a.audit.mu.Unlock()
	a.audit.lastAt = time.Now()
	if err != nil {
		a.audit.err = err.Error()
		a.log.Error("audit failed", "err", err)
		return
	}
	a.audit.last, a.audit.err = rep, ""
	a.auditMetrics.Observe(rep)
	n := 0
	for _, d := range rep.Domains {
		n += len(d.Findings)
	}
	a.log.Info("audit done", "domains", len(names), "findings", n)
}

// latestAudit is the last scheduled audit, for the admin console.
func (a *App) latestAudit() (*audit.Report, time.Time, error) {
	a.audit.mu.Lock()
	defer a.audit.mu.Unlock()
	var err error
	if a.audit.err != "" {
		err = errors.New(a.audit.err)
	}
	return a.audit.last, a.audit.lastAt, err
}

func (a *App) serveAudit(w http.ResponseWriter, r *http.Request) {
	a.audit.mu.Lock()
	defer a.audit.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		At     time.Time     `json:"at"`
		Error  string        `json:"error,omitempty"`
		Report *audit.Report `json:"report"`
	}{a.audit.lastAt, a.audit.err, a.audit.last})
}

// listSource feeds people's allow/block preferences (kept by the
// quarantine: "always allow this sender", "block the sender", and
// domain-wide entries stored for "@domain") into the lists check.
type listSource struct{ a *App }

func (s listSource) ListEntries(ctx context.Context, domain, rcpt string) ([]lists.Entry, error) {
	if s.a.quar == nil {
		return nil, nil
	}
	var out []lists.Entry
	for _, who := range []string{"@" + domain, rcpt} {
		if who == "" || who == "@" {
			continue
		}
		ps, err := s.a.quar.Prefs.List(ctx, who)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			out = append(out, lists.Entry{Kind: lists.KindSender, Value: p.Sender, Allow: p.Kind == quarantine.Allow})
		}
	}
	return out, nil
}
