package milter

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// reporter batches bypass events per domain and POSTs them to Moat.
type reporter struct {
	url      string
	secrets  func(string) []byte
	interval time.Duration
	max      int
	client   *http.Client
	log      *slog.Logger
	m        *metrics

	mu      sync.Mutex
	pending map[string][]Event
	n       int
	kick    chan struct{}
	done    chan struct{}
}

func newReporter(url string, secrets func(string) []byte, interval time.Duration, max int, log *slog.Logger, m *metrics) *reporter {
	return &reporter{url: url, secrets: secrets, interval: interval, max: max, log: log, m: m,
		client:  &http.Client{Timeout: 10 * time.Second},
		pending: map[string][]Event{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// add queues an event; it never blocks.
func (r *reporter) add(domain string, e Event) {
	r.mu.Lock()
	if r.n >= r.max {
		r.mu.Unlock()
		r.m.reports.WithLabelValues("dropped").Inc()
		return
	}
	r.pending[domain] = append(r.pending[domain], e)
	r.n++
	full := len(r.pending[domain]) >= MaxReportEvents
	r.mu.Unlock()
	if full {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// run sends batches every interval until ctx ends, then flushes once.
func (r *reporter) run(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r.flush(fctx)
			cancel()
			return
		case <-t.C:
		case <-r.kick:
		}
		r.flush(ctx)
	}
}

func (r *reporter) flush(ctx context.Context) {
	r.mu.Lock()
	batch := r.pending
	r.pending = map[string][]Event{}
	r.n = 0
	r.mu.Unlock()
	for domain, events := range batch {
		for len(events) > 0 {
			n := min(len(events), MaxReportEvents)
			if err := r.send(ctx, domain, events[:n]); err != nil {
				r.log.Warn("bypass report failed", "domain", domain, "events", len(events), "err", err)
				r.m.reports.WithLabelValues("error").Inc()
				r.requeue(domain, events)
				break
			}
			r.m.reports.WithLabelValues("sent").Inc()
			events = events[n:]
		}
	}
}

func (r *reporter) requeue(domain string, events []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	room := r.max - r.n
	if room < len(events) {
		r.m.reports.WithLabelValues("dropped").Add(float64(len(events) - max(room, 0)))
		events = events[:max(room, 0)]
	}
	r.pending[domain] = append(events, r.pending[domain]...)
	r.n += len(events)
}

func (r *reporter) send(ctx context.Context, domain string, events []Event) error {
	secret := r.secrets(domain)
	if secret == nil {
		return fmt.Errorf("no secret for %s", domain)
	}
	nonce := make([]byte, 12)
	rand.Read(nonce)
	body, err := json.Marshal(Report{Version: 1, Domain: domain, Sent: time.Now().UTC(), Nonce: hex.EncodeToString(nonce), Events: events})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(secret, body))
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("report endpoint answered %s", resp.Status)
	}
	return nil
}
