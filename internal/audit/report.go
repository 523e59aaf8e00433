package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Severity of a finding.
type Severity int

// Severities, ordered.
const (
	Info Severity = iota
	Warning
	Critical
)

func (s Severity) String() string {
	switch s {
	case Critical:
		return "critical"
	case Warning:
		return "warning"
	default:
		return "info"
	}
}

// MarshalText encodes the severity by name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a severity name.
func (s *Severity) UnmarshalText(b []byte) error {
	switch string(b) {
	case "critical":
		*s = Critical
	case "warning":
		*s = Warning
	case "info":
		*s = Info
	default:
		return fmt.Errorf("unknown severity %q", b)
	}
	return nil
}

// Kinds of findings.
const (
	KindMXLeak          = "mx_leak"           // an MX that is not Moat
	KindNotRouted       = "not_routed"        // no MX points at Moat at all
	KindGuessableName   = "guessable_name"    // mail.DOMAIN etc. points at the backend / an SMTP server
	KindDirect          = "direct_reachable"  // a backend accepts the domain's mail from a non-Moat address
	KindPassMark        = "passmark_enforced" // canary result
	KindPartialDomain   = "partial_domain"    // another domain shares the backend without Moat
	KindInconclusive    = "probe_inconclusive"
	KindNullMX          = "null_mx"
	KindUnknownBackends = "no_route"
)

// Finding is one problem (or one observation) about a domain.
type Finding struct {
	Severity    Severity `json:"severity"`
	Kind        string   `json:"kind"`
	Subject     string   `json:"subject"`     // the record, host or address concerned
	Explanation string   `json:"explanation"` // why it matters
	Fix         string   `json:"fix"`         // what exactly to change
}

// Candidate is an address that may be a backend, and why we think so.
type Candidate struct {
	Addr    string   `json:"addr"`
	Sources []string `json:"sources"`
}

// Probe is the outcome of one SMTP probe.
type Probe struct {
	Target  string `json:"target"` // addr:port
	Outcome string `json:"outcome"`
	Reply   string `json:"reply,omitempty"` // the deciding server reply or error
}

// Probe outcomes.
const (
	OutcomeConnectFailed  = "connect_failed" // refused, unreachable or timed out: pass
	OutcomeGreetingRefuse = "greeting_refused"
	OutcomeRcptRefused    = "rcpt_refused" // 5xx at MAIL or RCPT: pass
	OutcomeRcptTempfail   = "rcpt_tempfail"
	OutcomeAccepted       = "accepted"        // 2xx at RCPT: leak
	OutcomeCanaryRejected = "canary_rejected" // RCPT ok, canary refused at end of DATA
	OutcomeCanaryAccepted = "canary_accepted" // canary delivered: leak
	OutcomeFromMoat       = "from_moat_address"
	OutcomeError          = "error"
)

// DomainReport is the audit of one domain.
type DomainReport struct {
	Domain     string      `json:"domain"`
	Findings   []Finding   `json:"findings"`
	Candidates []Candidate `json:"candidates,omitempty"`
	Probes     []Probe     `json:"probes,omitempty"`
	// Error is set when the domain could not be audited (DNS failure).
	Error string `json:"error,omitempty"`
}

// Worst returns the highest severity among the findings (Info if none).
func (d *DomainReport) Worst() Severity {
	w := Info
	for _, f := range d.Findings {
		w = max(w, f.Severity)
	}
	return w
}

func (d *DomainReport) add(f Finding) { d.Findings = append(d.Findings, f) }

// Report is the result of one audit run.
type Report struct {
	Started  time.Time       `json:"started"`
	Duration time.Duration   `json:"duration_ns"`
	Probed   bool            `json:"probed"`
	Domains  []*DomainReport `json:"domains"`
}

// Count returns the number of findings of severity s.
func (r *Report) Count(s Severity) int {
	n := 0
	for _, d := range r.Domains {
		for _, f := range d.Findings {
			if f.Severity == s {
				n++
			}
		}
	}
	return n
}

// Failed reports whether some domain could not be audited.
func (r *Report) Failed() bool {
	for _, d := range r.Domains {
		if d.Error != "" {
			return true
		}
	}
	return false
}

// ExitCode is the CLI convention: 0 clean (info only), 1 warning or worse,
// 2 the audit could not run for some domain.
func (r *Report) ExitCode() int {
	if r.Failed() {
		return 2
	}
	if r.Count(Warning)+r.Count(Critical) > 0 {
		return 1
	}
	return 0
}

// Summary is a one-line summary.
func (r *Report) Summary() string {
	failed := 0
	for _, d := range r.Domains {
		if d.Error != "" {
			failed++
		}
	}
	s := fmt.Sprintf("%d domain(s) audited: %d critical, %d warning, %d info", len(r.Domains),
		r.Count(Critical), r.Count(Warning), r.Count(Info))
	if failed > 0 {
		s += fmt.Sprintf(", %d could not be audited", failed)
	}
	if !r.Probed {
		s += " (no --probe: direct reachability not tested)"
	}
	return s
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
	ansiGreen  = "\x1b[32m"
)

// WriteText writes the human-readable report grouped by domain and
// severity; color adds ANSI colours (use only on a terminal).
func (r *Report) WriteText(w io.Writer, color bool) error {
	c := func(code, s string) string {
		if !color {
			return s
		}
		return code + s + ansiReset
	}
	sevColor := map[Severity]string{Critical: ansiRed, Warning: ansiYellow, Info: ansiCyan}
	var b strings.Builder
	for _, d := range r.Domains {
		fmt.Fprintf(&b, "%s\n", c(ansiBold, d.Domain))
		if d.Error != "" {
			fmt.Fprintf(&b, "  %s %s\n", c(ansiRed, "ERROR"), d.Error)
		}
		fs := append([]Finding(nil), d.Findings...)
		sort.SliceStable(fs, func(i, j int) bool { return fs[i].Severity > fs[j].Severity })
		if len(fs) == 0 && d.Error == "" {
			fmt.Fprintf(&b, "  %s no leaks found\n", c(ansiGreen, "OK"))
		}
		for _, f := range fs {
			tag := strings.ToUpper(f.Severity.String())
			fmt.Fprintf(&b, "  %s [%s] %s\n", c(sevColor[f.Severity], fmt.Sprintf("%-8s", tag)), f.Kind, f.Subject)
			fmt.Fprintf(&b, "      why: %s\n", f.Explanation)
			fmt.Fprintf(&b, "      fix: %s\n", strings.ReplaceAll(f.Fix, "\n", "\n           "))
		}
		if len(d.Probes) > 0 {
			fmt.Fprintf(&b, "  probes:\n")
			for _, p := range d.Probes {
				fmt.Fprintf(&b, "    %-28s %-18s %s\n", p.Target, p.Outcome, p.Reply)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString(r.Summary())
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}
