package smtpd

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkSession measures the whole smtpd path per message (TCP on
// loopback, no checks, the fsyncing test spool) with 20 concurrent
// senders, each pipelining MAIL/RCPT/DATA on one connection.
func BenchmarkSession(b *testing.B) {
	e := newEnvB(b)
	body := msg("bench", strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 60)) + ".\r\n"
	const senders = 20
	var left atomic.Int64
	left.Store(int64(b.N))
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.dialB(b)
			c.reply()
			c.send("EHLO bench.test\r\n")
			c.replyLines()
			for left.Add(-1) >= 0 {
				c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@customer.example>\r\nDATA\r\n")
				c.reply()
				c.reply()
				if r := c.reply(); !strings.HasPrefix(r, "354") {
					b.Errorf("DATA: %q", r)
					return
				}
				c.send(body)
				if r := c.reply(); !strings.HasPrefix(r, "250") {
					b.Errorf("end: %q", r)
					return
				}
			}
			c.send("QUIT\r\n")
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
