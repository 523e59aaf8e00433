package clamd

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	scans      *prometheus.CounterVec
	latency    prometheus.Histogram
	up         *prometheus.GaugeVec
	infections *prometheus.CounterVec
}

// newMetrics registers the client's metrics on reg (nil: not exported).
// Registering twice on one registry (a second client, e.g. the quarantine
// release scanner) reuses the collectors already there.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_clamd_scans_total",
			Help: "clamd scans by result: clean, infected, error, too_large.",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_clamd_scan_duration_seconds",
			Help:    "Time to stream one message to clamd and read its verdict (including failover).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "moat_clamd_up",
			Help: "1 if the clamd instance answered its last health probe or scan, else 0.",
		}, []string{"addr"}),
		infections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_clamd_infections_total",
			Help: "Infected messages by signature name.",
		}, []string{"signature"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.scans, err = register(reg, m.scans); err != nil {
		return nil, err
	}
	if m.latency, err = register(reg, m.latency); err != nil {
		return nil, err
	}
	if m.up, err = register(reg, m.up); err != nil {
		return nil, err
	}
	if m.infections, err = register(reg, m.infections); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
