package tracking

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	dropped      prometheus.Counter
	written      prometheus.Counter
	lost         prometheus.Counter
	writeErrors  prometheus.Counter
	batchSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_tracking_events_dropped_total",
			Help: "Tracking events dropped because the buffer to the database writer was full.",
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_tracking_events_written_total",
			Help: "Tracking events written to the database.",
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_tracking_events_lost_total",
			Help: "Tracking events lost because their batch could not be written.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_tracking_write_errors_total",
			Help: "Tracking batches that could not be written.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_tracking_batch_duration_seconds",
			Help:    "Time to write one batch of tracking events (one transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.dropped, m.written, m.lost, m.writeErrors, m.batchSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
