// Package attach is the attachment policy: a DATA check named "attach"
// that walks the MIME structure of a message (go-message, bounded parts and
// depth) and, for every attachment and every entry of attached ZIP archives
// (read into memory within limits, nested archives two levels deep), finds
//
//   - blocked file extensions (.exe, .js, .iso, ...),
//   - blocked media types, declared or sniffed (PE and ELF executables),
//   - double extensions ("invoice.pdf.exe", "invoice.pdf      .js"),
//   - deceptive names (bidi overrides such as U+202E, zero-width
//     characters, NUL),
//   - encrypted ZIP entries (nothing can scan them),
//   - archives too big, too deep or too broken to inspect.
//
// Each kind of finding has a per-domain Rule: reject (554 5.7.1), quarantine
// or flag, plus a score. See docs/checks/attach.md.
package attach

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Name is the check's name in the check table and in policy layers.
const Name = "attach"

// PolicySource returns the attachment policy of a customer domain, or nil
// for the site policy (Config.Policy).
type PolicySource func(domain string) *Policy

// Check is the attachment DATA check.
type Check struct {
	cfg      Config
	log      *slog.Logger
	policies PolicySource
	findings *prometheus.CounterVec
}

var _ pipeline.DataChecker = (*Check)(nil)

// New validates cfg and returns the check. policies may be nil (every
// domain uses cfg.Policy); a policy it returns must be valid (see
// Policy.Validate). log and reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer, policies PolicySource) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Check{cfg: cfg, log: log, policies: policies}
	c.findings = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_attach_findings_total",
		Help: "Attachment findings by kind (blocked_extension, blocked_type, double_extension, deceptive_name, encrypted_archive, archive_limit, mime_depth).",
	}, []string{"kind"})
	if reg != nil {
		if err := reg.Register(c.findings); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return Name }

func (c *Check) policy(tx *pipeline.Txn) *Policy {
	if c.policies != nil && tx != nil && len(tx.Rcpts) > 0 {
		if p := c.policies(tx.Rcpts[0].Domain); p != nil {
			return p
		}
	}
	return &c.cfg.Policy
}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, m *pipeline.Message) verdict.Result {
	log := c.log
	if tx != nil && tx.Log != nil {
		log = tx.Log
	}
	rc, err := shared.Open(m) // one spool read shared with the other checks
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("attach: open message: %w", err)}
	}
	defer rc.Close()
	pol := c.policy(tx)
	findings, err := Inspect(rc, c.cfg, pol)
	if err != nil {
		return verdict.Result{Err: fmt.Errorf("attach: read message: %w", err)}
	}
	for _, f := range findings {
		c.findings.WithLabelValues(f.Kind.String()).Inc()
		log.Info("attachment finding", "check", Name, "kind", f.Kind.String(), "name", f.Path(), "detail", f.Detail)
	}
	return Evaluate(findings, pol)
}

// Rule returns the policy's rule for a kind of finding.
func (p *Policy) Rule(k Kind) Rule {
	switch k {
	case BlockedExtension:
		return p.BlockedExtension
	case BlockedType:
		return p.BlockedType
	case DoubleExtension:
		return p.DoubleExtension
	case DeceptiveName:
		return p.DeceptiveName
	case EncryptedArchive:
		return p.EncryptedArchive
	case ArchiveLimit:
		return p.ArchiveLimit
	case MIMEDepth:
		return p.MIMEDepth
	}
	return Rule{Action: ActionFlag}
}

func severity(a Action) int {
	switch a {
	case ActionReject:
		return 2
	case ActionQuarantine:
		return 1
	}
	return 0
}

// Evaluate turns findings into the check's result under policy p: one
// symbol per kind (Detail lists the names), and a hard verdict for the most
// severe action (reject or quarantine) naming the first file that caused it.
func Evaluate(findings []Finding, p *Policy) verdict.Result {
	var res verdict.Result
	if len(findings) == 0 {
		return res
	}
	idx := map[Kind]int{}
	var worst *Finding
	for i := range findings {
		f := &findings[i]
		r := p.Rule(f.Kind)
		j, ok := idx[f.Kind]
		if !ok {
			idx[f.Kind] = len(res.Symbols)
			res.Symbols = append(res.Symbols, verdict.Symbol{Name: f.Kind.Symbol(), Score: r.Score, Detail: f.Path()})
		} else if len(res.Symbols[j].Detail) < 200 {
			res.Symbols[j].Detail += ", " + f.Path()
		}
		if severity(r.Action) > 0 && (worst == nil || severity(r.Action) > severity(p.Rule(worst.Kind).Action)) {
			worst = f
		}
	}
	if worst == nil {
		return res
	}
	name := worst.Name
	if name == "" {
		name = worst.Where
	}
	var text string
	switch worst.Kind {
	case EncryptedArchive:
		text = "encrypted archive not allowed"
	case ArchiveLimit:
		text = "attachment could not be inspected"
	case MIMEDepth:
		text = "message parts nested too deep to inspect"
	default:
		text = "attachment type not allowed"
	}
	if name != "" {
		text += " (" + name + ")"
	}
	reason := worst.Kind.String() + ": " + worst.Path()
	if worst.Detail != "" {
		reason += " (" + worst.Detail + ")"
	}
	if p.Rule(worst.Kind).Action == ActionQuarantine {
		res.Hard = &verdict.Verdict{Action: verdict.Quarantine, Reason: reason,
			Reply: verdict.Reply{Code: 554, Enhanced: [3]int{5, 7, 1}, Text: "Message held for review: " + text}}
	} else {
		res.Hard = &verdict.Verdict{Action: verdict.Reject, Reason: reason,
			Reply: verdict.Reply{Code: 554, Enhanced: [3]int{5, 7, 1}, Text: "Message rejected: " + text}}
	}
	return res
}

// String renders a finding for logs.
func (f Finding) String() string {
	var b strings.Builder
	b.WriteString(f.Kind.String())
	b.WriteString(": ")
	b.WriteString(f.Path())
	if f.Detail != "" {
		b.WriteString(" (" + f.Detail + ")")
	}
	return b.String()
}
