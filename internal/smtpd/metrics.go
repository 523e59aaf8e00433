package smtpd

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connCurrent  prometheus.Gauge
	connTotal    prometheus.Counter
	connRefused  *prometheus.CounterVec // reason: max_connections, per_ip, rate, drop
	transactions *prometheus.CounterVec // outcome: queued, quarantined, rejected, tempfailed, ...
	rejects      *prometheus.CounterVec // reason, code
	bytes        prometheus.Counter
	dataLatency  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connCurrent: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moat_smtpd_connections_current", Help: "Inbound SMTP connections open now."}),
		connTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_smtpd_connections_total", Help: "Inbound SMTP connections accepted."}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_smtpd_connections_refused_total", Help: "Inbound SMTP connections refused with 421, by reason."},
			[]string{"reason"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_smtpd_transactions_total", Help: "SMTP transactions (MAIL ... end), by outcome."},
			[]string{"outcome"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_smtpd_rejects_total", Help: "4xx/5xx replies given, by reason and reply code."},
			[]string{"reason", "code"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_smtpd_received_bytes_total", Help: "Message octets received in DATA."}),
		dataLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_smtpd_data_seconds",
			Help:    "Time from end of DATA to the final reply (checks, commit).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connCurrent, m.connTotal, m.connRefused, m.transactions, m.rejects, m.bytes, m.dataLatency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) reject(reason string, code int) {
	m.rejects.WithLabelValues(reason, strconv.Itoa(code)).Inc()
}
