package queue

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	deliveries    *prometheus.CounterVec
	dsns          *prometheus.CounterVec
	commitLatency prometheus.Histogram
	commitErrors  prometheus.Counter
	batchSize     prometheus.Histogram
}

func newMetrics(q *Queue, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_queue_deliveries_total",
			Help: "Recipient delivery outcomes: delivered, deferred, failed, expired.",
		}, []string{"outcome"}),
		dsns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_queue_dsn_total",
			Help: "DSNs queued to senders, by action (failed, delayed).",
		}, []string{"action"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_queue_commit_duration_seconds",
			Help:    "Time for Draft.Commit to make a message durable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_queue_commit_errors_total",
			Help: "Commits that failed (the client got a temporary error).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "moat_queue_fsync_batch_size",
			Help:    "Commit requests covered by one group commit (one fsync per directory).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
	}
	for _, o := range []string{"delivered", "deferred", "failed", "expired"} {
		m.deliveries.WithLabelValues(o)
	}
	for _, a := range []string{"failed", "delayed"} {
		m.dsns.WithLabelValues(a)
	}
	cs := []prometheus.Collector{
		m.deliveries, m.dsns, m.commitLatency, m.commitErrors, m.batchSize,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "moat_queue_messages",
			Help: "Messages in the queue (ready and held).",
		}, func() float64 { s := q.stats(); return float64(s.messages) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "moat_queue_recipients",
			Help: "Pending recipients in the queue.",
		}, func() float64 { s := q.stats(); return float64(s.rcpts) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "moat_queue_oldest_message_age_seconds",
			Help: "Age of the oldest queued message (0 when empty).",
		}, func() float64 { s := q.stats(); return s.oldest }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
