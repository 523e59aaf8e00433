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
	KindMXInvalid       = "mx_invalid"      // MX target is a CNAME or an IP literal (RFC 2181, 5321)
	KindSPFReveals      = "spf_reveals"     // the SPF record names a mail server of the domain
	KindCouldNotCheck   = "could_not_check" // a lookup failed (SERVFAIL, timeout): the audit is incomplete
)

// Domain and run statuses (DomainReport.Status, Report.Status).
const (
	StatusClean      = "clean"           // nothing above info, everything checked
	StatusLeaks      = "leaks"           // at least one warning or critical finding
	StatusIncomplete = "could_not_check" // no leak found, but something could not be checked
)

// Finding is one problem (or one observation) about a domain.
type Finding struct {
	Severity    Severity `json:"severity"`
	Kind        string   `json:"kind"`
	Subject     string   `json:"subject"`     // the record, host or address concerned
	Explanation string   `json:"explanation"` // why it matters
	Fix         string   `json:"fix"`         // what exactly to change
	// Record is the DNS record concerned, in zone-file form, if any.
	Record string `json:"record,omitempty"`
	// Address is the address (or address:port) concerned, if any.
	Address string `json:"address,omitempty"`
	// Evidence is what proves it: the resolution chain, or the summary of
	// the SMTP exchange of the probe.
	Evidence string `json:"evidence,omitempty"`
	// Lockdown is the command that generates the backend configuration
	// closing this leak, if a lockdown applies.
	Lockdown string `json:"lockdown,omitempty"`
}

// leak reports whether the finding is a leak (counts for exit status 1).
func (f Finding) leak() bool { return f.Severity >= Warning && f.Kind != KindCouldNotCheck }

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
	// Transcript is the SMTP exchange, one line per command ("C: ") or
	// reply ("S: "), replies shortened.
	Transcript []string `json:"transcript,omitempty"`
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
	Domain string `json:"domain"`
	// Status is clean, leaks or could_not_check (see the Status constants).
	Status     string      `json:"status"`
	Findings   []Finding   `json:"findings"`
	Candidates []Candidate `json:"candidates,omitempty"`
	Probes     []Probe     `json:"probes,omitempty"`
	// Error is set when the domain could not be audited at all (its MX
	// lookup failed, or it does not exist).
	Error string `json:"error,omitempty"`
	// Lockdown is `moat lockdown` output (nftables) closing this domain's
	// direct-reachability leaks, when there are any and no partial domain
	// forbids a firewall.
	Lockdown string `json:"lockdown_nftables,omitempty"`
}

// Leaks counts the findings of severity warning or worse (not counting
// could_not_check).
func (d *DomainReport) Leaks() int {
	n := 0
	for _, f := range d.Findings {
		if f.leak() {
			n++
		}
	}
	return n
}

// Incomplete reports whether something of the domain could not be checked.
func (d *DomainReport) Incomplete() bool {
	if d.Error != "" {
		return true
	}
	for _, f := range d.Findings {
		if f.Kind == KindCouldNotCheck {
			return true
		}
	}
	return false
}

func (d *DomainReport) setStatus() {
	switch {
	case d.Leaks() > 0:
		d.Status = StatusLeaks
	case d.Incomplete():
		d.Status = StatusIncomplete
	default:
		d.Status = StatusClean
	}
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
	// Status is leaks if any domain has leaks, else could_not_check if any
	// domain is incomplete, else clean. ExitCode maps it to 1, 2, 0.
	Status   string          `json:"status"`
	Code     int             `json:"exit_code"`
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

// Failed reports whether something of some domain could not be checked.
func (r *Report) Failed() bool {
	for _, d := range r.Domains {
		if d.Incomplete() {
			return true
		}
	}
	return false
}

// finish computes the statuses and the exit code.
func (r *Report) finish() {
	leaks := false
	for _, d := range r.Domains {
		d.setStatus()
		leaks = leaks || d.Status == StatusLeaks
	}
	switch {
	case leaks:
		r.Status, r.Code = StatusLeaks, 1
	case r.Failed():
		r.Status, r.Code = StatusIncomplete, 2
	default:
		r.Status, r.Code = StatusClean, 0
	}
}

// ExitCode is the CLI convention: 0 clean (info only, everything checked), 1
// at least one leak (a warning or critical finding; other checks may have
// failed too), 2 no leak found but something could not be checked (DNS
// SERVFAIL, timeout, NXDOMAIN): never "clean".
func (r *Report) ExitCode() int {
	r.finish()
	return r.Code
}

// Summary is a one-line summary.
func (r *Report) Summary() string {
	failed := 0
	for _, d := range r.Domains {
		if d.Incomplete() {
			failed++
		}
	}
	s := fmt.Sprintf("%d domain(s) audited: %d critical, %d warning, %d info", len(r.Domains),
		r.Count(Critical), r.Count(Warning), r.Count(Info))
	if failed > 0 {
		s += fmt.Sprintf(", %d could not be fully checked (NOT clean)", failed)
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
		if d.Leaks() == 0 && !d.Incomplete() {
			fmt.Fprintf(&b, "  %s no leaks found\n", c(ansiGreen, "OK"))
		}
		for _, f := range fs {
			tag := strings.ToUpper(f.Severity.String())
			fmt.Fprintf(&b, "  %s [%s] %s\n", c(sevColor[f.Severity], fmt.Sprintf("%-8s", tag)), f.Kind, f.Subject)
			fmt.Fprintf(&b, "      why: %s\n", f.Explanation)
			if f.Evidence != "" {
				fmt.Fprintf(&b, "      evidence: %s\n", f.Evidence)
			}
			fmt.Fprintf(&b, "      fix: %s\n", strings.ReplaceAll(f.Fix, "\n", "\n           "))
			if f.Lockdown != "" {
				fmt.Fprintf(&b, "      lockdown: %s\n", f.Lockdown)
			}
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
