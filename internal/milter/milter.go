// Package milter is `moat milter`: a milter for the customer's backend MTA
// (Postfix smtpd_milters, Sendmail) that refuses mail for Moat-protected
// domains unless it carries a valid pass mark, so mail that skipped Moat
// (direct to the backend, a leaked MX, mail.DOMAIN) is refused even where a
// firewall lockdown is impossible (partial domains). Every refused (or, in
// observe-only mode, accepted) unmarked message is reported to Moat, which
// keeps bypass statistics (ReportHandler, Stats).
package milter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"moat.dev/moat/internal/netaddr"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/d--j/go-milter/mailfilter"
	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/passmark"
)

type metrics struct {
	messages *prometheus.CounterVec
	reports  *prometheus.CounterVec
}

// Filter is the running milter.
type Filter struct {
	cfg         Config
	secrets     func(domain string) []byte
	log         *slog.Logger
	m           *metrics
	trusted     []netip.Prefix
	rep         *reporter
	mf          *mailfilter.MailFilter
	cancel      context.CancelFunc
	repDone     chan struct{}
	nowForTests func() time.Time
}

// New builds a filter. secrets returns the pass-mark secret of a protected
// domain (nil for other domains, whose mail passes untouched). Metrics
// moat_milter_messages_total{result} and moat_milter_reports_total{result}
// are registered on reg.
func New(cfg Config, secrets func(domain string) []byte, log *slog.Logger, reg prometheus.Registerer) (*Filter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f := &Filter{cfg: cfg, secrets: secrets, log: log, m: &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_milter_messages_total",
			Help: "Messages seen by moat milter by result: marked, trusted, authenticated, unprotected, rejected, observed.",
		}, []string{"result"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_milter_reports_total",
			Help: "Bypass reports to Moat by result: sent, error, dropped (events).",
		}, []string{"result"}),
	}}
	for _, c := range []prometheus.Collector{f.m.messages, f.m.reports} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, s := range cfg.Trusted {
		p, _ := netaddr.ParsePrefix(s)
		f.trusted = append(f.trusted, p)
	}
	return f, nil
}

// Start listens on cfg.Listen and serves until Shutdown.
func (f *Filter) Start() error {
	network, addr := "tcp", f.cfg.Listen
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", p
	} else if p, ok := strings.CutPrefix(addr, "inet:"); ok {
		addr = p
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	if f.cfg.ReportURL != "" {
		f.rep = newReporter(f.cfg.ReportURL, f.secrets, f.cfg.ReportInterval, f.cfg.ReportQueue, f.log, f.m)
		go f.rep.run(ctx)
	}
	mf, err := mailfilter.New(network, addr, f.Decide,
		mailfilter.WithDecisionAt(mailfilter.DecisionAtEndOfMessage),
		mailfilter.WithBody(1<<20, f.cfg.MaxMessageSize, mailfilter.RejectMessageWhenTooBig),
		mailfilter.WithErrorHandling(mailfilter.TempFailWhenError),
	)
	if err != nil {
		cancel()
		return err
	}
	f.mf = mf
	f.log.Info("milter listening", "addr", mf.Addr().String())
	return nil
}

// Addr is the listening address (after Start).
func (f *Filter) Addr() net.Addr { return f.mf.Addr() }

// Shutdown stops accepting connections, waits for running sessions (until
// ctx ends) and flushes pending bypass reports.
func (f *Filter) Shutdown(ctx context.Context) error {
	var err error
	if f.mf != nil {
		err = f.mf.Shutdown(ctx)
	}
	if f.cancel != nil {
		f.cancel()
	}
	if f.rep != nil {
		select {
		case <-f.rep.done:
		case <-ctx.Done():
		}
	}
	return err
}

func reason(err error) string {
	switch {
	case errors.Is(err, passmark.ErrMissing):
		return "missing"
	case errors.Is(err, passmark.ErrForged):
		return "forged"
	case errors.Is(err, passmark.ErrRecipient):
		return "recipient"
	case errors.Is(err, passmark.ErrAltered):
		return "altered"
	case errors.Is(err, passmark.ErrExpired):
		return "expired"
	default:
		return "malformed"
	}
}

func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[i+1:], "."))
}

// Decide is the end-of-message decision (exported for tests with
// mailfilter/testtrx).
func (f *Filter) Decide(ctx context.Context, trx mailfilter.Trx) (mailfilter.Decision, error) {
	conn := trx.Connect()
	client, _ := netip.ParseAddr(strings.Trim(conn.Addr, "[]"))
	client = client.Unmap()
	log := f.log.With("queue_id", trx.QueueId(), "client", conn.Addr)
	if conn.Family != "tcp4" && conn.Family != "tcp6" && conn.Family != "tcp" {
		f.m.messages.WithLabelValues("trusted").Inc() // local (unix socket / pickup)
		return mailfilter.Accept, nil
	}
	for _, p := range f.trusted {
		if client.IsValid() && p.Contains(client) {
			f.m.messages.WithLabelValues("trusted").Inc()
			return mailfilter.Accept, nil
		}
	}
	if f.cfg.TrustAuthenticated && trx.MailFrom().AuthenticatedUser() != "" {
		f.m.messages.WithLabelValues("authenticated").Inc()
		return mailfilter.Accept, nil
	}
	// Protected recipients, grouped by domain.
	groups := map[string][]string{}
	var order []string
	for _, r := range trx.RcptTos() {
		d := domainOf(r.Addr)
		if d == "" || f.secrets(d) == nil {
			continue
		}
		if _, ok := groups[d]; !ok {
			order = append(order, d)
		}
		groups[d] = append(groups[d], r.Addr)
	}
	if len(order) == 0 {
		f.m.messages.WithLabelValues("unprotected").Inc()
		return mailfilter.Accept, nil
	}
	raw, err := io.ReadAll(trx.Data())
	if err != nil {
		return nil, fmt.Errorf("reading message: %w", err)
	}
	opt := passmark.Options{MaxAge: f.cfg.MaxAge}
	if f.nowForTests != nil {
		opt.Now = f.nowForTests()
	}
	var bad []string
	var why string
	for _, d := range order {
		if _, err := passmark.VerifyMessage(f.secrets(d), raw, groups[d], opt); err != nil {
			bad = append(bad, d)
			why = reason(err)
			if f.rep != nil {
				f.rep.add(d, Event{ClientIP: client.String(), Time: time.Now().UTC(), Reason: why, QueueID: trx.QueueId()})
			}
		}
	}
	if len(bad) == 0 {
		if f.cfg.StripMark {
			fields := trx.Headers().Fields()
			for fields.Next() {
				if fields.CanonicalKey() == "X-Moat-Pass" {
					fields.Del()
				}
			}
		}
		f.m.messages.WithLabelValues("marked").Inc()
		return mailfilter.Accept, nil
	}
	if f.cfg.ObserveOnly {
		f.m.messages.WithLabelValues("observed").Inc()
		log.Info("unmarked message accepted (observe_only)", "domains", bad, "reason", why)
		return mailfilter.Accept, nil
	}
	f.m.messages.WithLabelValues("rejected").Inc()
	log.Info("unmarked message rejected", "domains", bad, "reason", why)
	return mailfilter.CustomErrorResponse(550, fmt.Sprintf("5.7.1 Mail for %s must be sent to its MX hosts", bad[0])), nil
}
