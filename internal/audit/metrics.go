package audit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics exports the latest audit results.
type Metrics struct {
	findings *prometheus.GaugeVec
	failed   *prometheus.GaugeVec
	lastRun  prometheus.Gauge
}

// NewMetrics registers the audit metrics on reg:
// moat_audit_findings{domain,severity} (findings in the latest run),
// moat_audit_failed{domain} (1 when the domain could not be audited) and
// moat_audit_last_run_timestamp_seconds.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		findings: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "moat_audit_findings",
			Help: "Leakage findings per domain and severity in the latest audit run.",
		}, []string{"domain", "severity"}),
		failed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "moat_audit_failed",
			Help: "1 when something of the domain could not be checked in the latest audit (DNS failure).",
		}, []string{"domain"}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moat_audit_last_run_timestamp_seconds",
			Help: "Start time of the latest audit run.",
		}),
	}
	for _, c := range []prometheus.Collector{m.findings, m.failed, m.lastRun} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observe replaces the exported values of the domains in r with r's results.
func (m *Metrics) Observe(r *Report) {
	for _, d := range r.Domains {
		counts := map[Severity]int{}
		for _, f := range d.Findings {
			counts[f.Severity]++
		}
		for _, s := range []Severity{Info, Warning, Critical} {
			m.findings.WithLabelValues(d.Domain, s.String()).Set(float64(counts[s]))
		}
		failed := 0.0
		if d.Incomplete() {
			failed = 1
		}
		m.failed.WithLabelValues(d.Domain).Set(failed)
	}
	m.lastRun.Set(float64(r.Started.Unix()))
}

// Forget removes a domain's series (the domain was deleted).
func (m *Metrics) Forget(domain string) {
	for _, s := range []Severity{Info, Warning, Critical} {
		m.findings.DeleteLabelValues(domain, s.String())
	}
	m.failed.DeleteLabelValues(domain)
}
