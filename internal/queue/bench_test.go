package queue

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// BenchmarkCommitParallel measures durable commits (real fsyncs) from many
// concurrent sessions and reports commits/s and messages per group commit.
func BenchmarkCommitParallel(b *testing.B) {
	cfg := DefaultConfig()
	cfg.SpoolDir = b.TempDir()
	q, err := Open(cfg, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	msg := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 100) // ~7.5 kB
	env := &Envelope{From: "s@s.test", Rcpts: []RcptState{{Addr: "u@a.test", Domain: "a.test"}}}
	b.SetParallelism(max(1, 100/runtime.GOMAXPROCS(0))) // ~100 concurrent sessions
	b.SetBytes(int64(len(msg)))
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d, err := q.NewDraft()
			if err != nil {
				b.Error(err)
				return
			}
			d.Write(msg)
			if err := d.Commit(env); err != nil {
				b.Error(err)
				return
			}
		}
	})
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "commits/s")
	h := histogramOf(q)
	batches, commits := h[0], h[1]
	if batches > 0 {
		b.ReportMetric(commits/batches, "commits/fsync")
	}
}

// BenchmarkCommitSerial is the one-session baseline for
// BenchmarkCommitParallel: every commit pays its own fsyncs.
func BenchmarkCommitSerial(b *testing.B) {
	cfg := DefaultConfig()
	cfg.SpoolDir = b.TempDir()
	q, err := Open(cfg, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	msg := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 100)
	env := &Envelope{From: "s@s.test", Rcpts: []RcptState{{Addr: "u@a.test", Domain: "a.test"}}}
	start := time.Now()
	for b.Loop() {
		d, err := q.NewDraft()
		if err != nil {
			b.Fatal(err)
		}
		d.Write(msg)
		if err := d.Commit(env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
}
