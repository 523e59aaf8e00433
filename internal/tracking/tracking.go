// Package tracking answers "what happened to the message from X to Y at
// 10:14?". It is built from the structured logs: Handler wraps the process's
// slog.Handler, passes every record on unchanged, and hands every record that
// carries a queue_id attribute to a Tracker as a compact Event. The Tracker
// writes events in batches (one transaction per batch) into its own tables in
// the store's database, keeps a per-message summary, prunes old data, and
// answers searches and statistics for the admin API and the dashboard.
//
// The SMTP path never waits for tracking: events go through a bounded
// channel and are dropped (and counted) when it is full.
package tracking

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/idna"

	"moat.dev/moat/internal/store/sqlstore"
)

// Config is the tracking section of the configuration file.
type Config struct {
	// Retention is how long events and message summaries are kept.
	// Default 720h (30 days); minimum 1h.
	Retention time.Duration `yaml:"retention"`
	// Buffer is the capacity of the channel between the logger and the
	// database writer. When it is full, events are dropped and counted in
	// moat_tracking_events_dropped_total. Default 8192.
	Buffer int `yaml:"buffer"`
	// BatchSize is the largest number of events written in one
	// transaction. Default 500.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest an event waits before it is written.
	// Default 200ms.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// PruneInterval is how often data older than Retention is deleted.
	// Default 1h.
	PruneInterval time.Duration `yaml:"prune_interval"`
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		Retention:     30 * 24 * time.Hour,
		Buffer:        8192,
		BatchSize:     500,
		FlushInterval: 200 * time.Millisecond,
		PruneInterval: time.Hour,
	}
}

// Validate checks the settings; errors name the key.
func (c *Config) Validate() error {
	switch {
	case c.Retention < time.Hour:
		return errors.New("retention: must be >= 1h")
	case c.Buffer < 1 || c.Buffer > 1<<20:
		return errors.New("buffer: must be 1-1048576")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return errors.New("batch_size: must be 1-10000")
	case c.FlushInterval < time.Millisecond || c.FlushInterval > time.Minute:
		return errors.New("flush_interval: must be 1ms-1m")
	case c.PruneInterval < time.Minute:
		return errors.New("prune_interval: must be >= 1m")
	}
	return nil
}

// Event kinds.
const (
	KindTxn      = "txn"      // the SMTP server's one line per transaction
	KindDelivery = "delivery" // one delivery attempt for one recipient
	KindLog      = "log"      // any other line about the message
)

// Event is one log record about a message, reduced to what tracking needs.
type Event struct {
	QueueID string    `json:"queue_id"`
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Kind    string    `json:"kind"`
	Msg     string    `json:"msg"`
	// Delivery fields (also set on other lines when present).
	Rcpt    string `json:"rcpt,omitempty"`
	Domain  string `json:"domain,omitempty"`
	Host    string `json:"host,omitempty"`
	Outcome string `json:"outcome,omitempty"` // delivered, deferred, failed, expired; or the transaction outcome
	Reply   string `json:"reply,omitempty"`
	// Detail holds the record's remaining attributes as "key=value" pairs.
	Detail string `json:"detail,omitempty"`

	seq int64
	txn *txnInfo // set for KindTxn
}

// txnInfo is what the transaction line says about the message.
type txnInfo struct {
	connID, ip, helo, from string
	rcpts, symbols         []string
	refused                []string // recipients refused at RCPT (indexed too, to be found)
	size                   int64
	outcome, action        string
	score                  float64
	reason, reply          string
}

// Tracker receives events from Handler and stores them.
type Tracker struct {
	cfg    Config
	db     *sql.DB
	driver string
	log    *slog.Logger
	m      *metrics
	now    func() time.Time

	ch      chan *Event
	flushCh chan chan error

	sqlInsEvent, sqlUpMsg, sqlInsRcpt string // rebound for the driver
	seq                               int64  // guarded by the writer goroutine

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// New returns a Tracker writing to db (driver "sqlite" or "postgres"). It
// creates its tables if needed. Call Start to begin writing and Close to
// flush and stop. log must not be a logger wrapped by this Tracker's own
// Handler (its lines carry no queue_id, but a loop would be wasteful).
func New(ctx context.Context, cfg Config, db *sql.DB, driver string, log *slog.Logger, reg prometheus.Registerer) (*Tracker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tracking: %w", err)
	}
	if driver != "sqlite" && driver != "postgres" {
		return nil, fmt.Errorf("tracking: unknown driver %q", driver)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	return &Tracker{
		cfg: cfg, db: db, driver: driver, log: log, m: m, now: time.Now,
		ch:      make(chan *Event, cfg.Buffer),
		flushCh: make(chan chan error),
		done:    make(chan struct{}),
		seq:     time.Now().UnixMicro(),

		sqlInsEvent: sqlstore.Rebind(driver, sqlInsEvent),
		sqlUpMsg:    sqlstore.Rebind(driver, sqlUpMsg),
		sqlInsRcpt:  sqlstore.Rebind(driver, sqlInsRcpt),
	}, nil
}

func (t *Tracker) q(s string) string { return sqlstore.Rebind(t.driver, s) }

// Start starts the writer goroutine. It stops when ctx is cancelled or Close
// is called; what is buffered then is written first.
func (t *Tracker) Start(ctx context.Context) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.closed {
		return
	}
	t.started = true
	ctx, t.cancel = context.WithCancel(ctx)
	go t.run(ctx)
}

// Close stops the writer after writing what is buffered. Events offered
// after Close are dropped.
func (t *Tracker) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	started := t.started
	t.mu.Unlock()
	if !started {
		close(t.done)
		return nil
	}
	t.cancel()
	<-t.done
	return nil
}

// offer hands an event to the writer without blocking.
func (t *Tracker) offer(e *Event) {
	select {
	case t.ch <- e:
	default:
		t.m.dropped.Inc()
	}
}

// Flush writes every event offered before the call and returns the first
// write error. It is for tests and orderly shutdown; the writer flushes by
// itself every FlushInterval.
func (t *Tracker) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case t.flushCh <- reply:
	case <-t.done:
		return errors.New("tracking: stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *Tracker) run(ctx context.Context) {
	defer close(t.done)
	tick := time.NewTicker(t.cfg.FlushInterval)
	defer tick.Stop()
	prune := time.NewTicker(t.cfg.PruneInterval)
	defer prune.Stop()
	t.pruneNow()
	batch := make([]*Event, 0, t.cfg.BatchSize)
	write := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := t.write(batch)
		clear(batch)
		batch = batch[:0]
		return err
	}
	for {
		select {
		case e := <-t.ch:
			batch = append(batch, e)
			if len(batch) >= t.cfg.BatchSize {
				write()
			}
		case <-tick.C:
			write()
		case <-prune.C:
			write()
			t.pruneNow()
		case reply := <-t.flushCh:
			var first error
			for n := len(t.ch); n > 0; n-- {
				batch = append(batch, <-t.ch)
				if len(batch) >= t.cfg.BatchSize {
					if err := write(); err != nil && first == nil {
						first = err
					}
				}
			}
			if err := write(); err != nil && first == nil {
				first = err
			}
			reply <- first
		case <-ctx.Done():
			for n := len(t.ch); n > 0; n-- {
				batch = append(batch, <-t.ch)
				if len(batch) >= t.cfg.BatchSize {
					write()
				}
			}
			write()
			return
		}
	}
}

// write stores one batch in one transaction. A failed batch is logged,
// counted and dropped: tracking must not grow without bound while the
// database is down.
func (t *Tracker) write(batch []*Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := t.writeTx(ctx, batch)
	t.m.batchSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		t.m.writeErrors.Inc()
		t.m.lost.Add(float64(len(batch)))
		t.log.Error("tracking: cannot write events", "events", len(batch), "err", err)
		return err
	}
	t.m.written.Add(float64(len(batch)))
	return nil
}

// The writer's statements (? placeholders; rebound for PostgreSQL in New).
const (
	sqlInsEvent = `INSERT INTO tracking_events
		(queue_id, ts, seq, level, kind, msg, rcpt, domain, host, outcome, reply, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqlUpMsg = `INSERT INTO tracking_messages
		(queue_id, first_seen, last_seen, has_txn, conn_id, client_ip, helo, from_addr, size, action, outcome, score, symbols, reason, reason_key, reply)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (queue_id) DO UPDATE SET
		first_seen = CASE WHEN excluded.first_seen < tracking_messages.first_seen THEN excluded.first_seen ELSE tracking_messages.first_seen END,
		last_seen = CASE WHEN excluded.last_seen > tracking_messages.last_seen THEN excluded.last_seen ELSE tracking_messages.last_seen END,
		has_txn = CASE WHEN excluded.has_txn = 1 THEN 1 ELSE tracking_messages.has_txn END,
		conn_id = CASE WHEN excluded.has_txn = 1 THEN excluded.conn_id ELSE tracking_messages.conn_id END,
		client_ip = CASE WHEN excluded.has_txn = 1 THEN excluded.client_ip ELSE tracking_messages.client_ip END,
		helo = CASE WHEN excluded.has_txn = 1 THEN excluded.helo ELSE tracking_messages.helo END,
		from_addr = CASE WHEN excluded.has_txn = 1 THEN excluded.from_addr ELSE tracking_messages.from_addr END,
		size = CASE WHEN excluded.has_txn = 1 THEN excluded.size ELSE tracking_messages.size END,
		action = CASE WHEN excluded.has_txn = 1 THEN excluded.action ELSE tracking_messages.action END,
		outcome = CASE WHEN excluded.has_txn = 1 THEN excluded.outcome ELSE tracking_messages.outcome END,
		score = CASE WHEN excluded.has_txn = 1 THEN excluded.score ELSE tracking_messages.score END,
		symbols = CASE WHEN excluded.has_txn = 1 THEN excluded.symbols ELSE tracking_messages.symbols END,
		reason = CASE WHEN excluded.has_txn = 1 THEN excluded.reason ELSE tracking_messages.reason END,
		reason_key = CASE WHEN excluded.has_txn = 1 THEN excluded.reason_key ELSE tracking_messages.reason_key END,
		reply = CASE WHEN excluded.has_txn = 1 THEN excluded.reply ELSE tracking_messages.reply END`
	sqlInsRcpt = `INSERT INTO tracking_rcpts (queue_id, rcpt, domain, first_seen)
		VALUES (?, ?, ?, ?) ON CONFLICT (queue_id, rcpt) DO NOTHING`
)

func (t *Tracker) writeTx(ctx context.Context, batch []*Event) error {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Plain ExecContext with constant SQL: the store's SQLite driver keeps
	// the statements prepared across batches (pgx caches them too), where
	// Tx.PrepareContext compiled them again for every batch.
	insEvent, upMsg, insRcpt := t.sqlInsEvent, t.sqlUpMsg, t.sqlInsRcpt
	// One summary row per queue ID per batch.
	type sum struct {
		first, last int64
		txn         *txnInfo
		rcpts       map[string]string // rcpt → domain
		order       []string
	}
	sums := make(map[string]*sum)
	var ids []string
	for _, e := range batch {
		t.seq++
		ts := e.Time.UnixMicro()
		if _, err := tx.ExecContext(ctx, insEvent, e.QueueID, ts, t.seq, e.Level, e.Kind, e.Msg,
			e.Rcpt, e.Domain, e.Host, e.Outcome, e.Reply, e.Detail); err != nil {
			return err
		}
		s := sums[e.QueueID]
		if s == nil {
			s = &sum{first: ts, last: ts, rcpts: map[string]string{}}
			sums[e.QueueID] = s
			ids = append(ids, e.QueueID)
		}
		s.first, s.last = min(s.first, ts), max(s.last, ts)
		addRcpt := func(addr, domain string) {
			addr = strings.ToLower(strings.TrimSpace(addr))
			if addr == "" {
				return
			}
			if domain == "" {
				domain = DomainOf(addr)
			}
			if _, ok := s.rcpts[addr]; !ok {
				s.order = append(s.order, addr)
			}
			s.rcpts[addr] = normDomain(domain)
		}
		if e.txn != nil {
			s.txn = e.txn
			for _, r := range e.txn.rcpts {
				addRcpt(r, "")
			}
			for _, r := range e.txn.refused {
				addRcpt(r, "")
			}
		}
		if e.Kind == KindDelivery {
			addRcpt(e.Rcpt, e.Domain)
		}
	}
	for _, id := range ids {
		s := sums[id]
		has := 0
		var ti txnInfo
		if s.txn != nil {
			has, ti = 1, *s.txn
		}
		if _, err := tx.ExecContext(ctx, upMsg, id, s.first, s.last, has, ti.connID, ti.ip, ti.helo, ti.from,
			ti.size, ti.action, ti.outcome, ti.score, strings.Join(ti.symbols, " "), ti.reason,
			reasonKey(ti.action, ti.reason, ti.reply), ti.reply); err != nil {
			return err
		}
		for _, r := range s.order {
			if _, err := tx.ExecContext(ctx, insRcpt, id, r, s.rcpts[r], s.first); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// DomainOf is the customer domain of an address as tracking indexes it
// (normDomain): callers that scope tracked messages by domain compare
// the same spelling.
func DomainOf(addr string) string {
	addr = strings.Trim(addr, "<> ")
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return normDomain(addr[i+1:])
	}
	return ""
}

// idnaLookup is the profile smtpd uses to look customer domains up.
var idnaLookup = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// normDomain returns domain as customer domains are stored: lower case,
// A-labels (xn--...), no trailing dot. A recipient may be logged as
// info@bücher.example (SMTPUTF8) while the customer domain and the
// queue's "domain" attribute are xn--bcher-kva.example; scoping and the
// per-domain statistics compare the two.
func normDomain(d string) string {
	d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			if a, err := idnaLookup.ToASCII(d); err == nil && a != "" {
				return a
			}
			break
		}
	}
	return d
}

// pruneNow deletes data older than the retention.
func (t *Tracker) pruneNow() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cut := t.now().Add(-t.cfg.Retention).UnixMicro()
	var n int64
	for _, q := range []string{
		`DELETE FROM tracking_events WHERE ts < ?`,
		`DELETE FROM tracking_rcpts WHERE first_seen < ?`,
		`DELETE FROM tracking_messages WHERE last_seen < ?`,
	} {
		res, err := t.db.ExecContext(ctx, t.q(q), cut)
		if err != nil {
			t.log.Error("tracking: prune failed", "err", err)
			return
		}
		if k, err := res.RowsAffected(); err == nil {
			n += k
		}
	}
	if n > 0 {
		t.log.Info("tracking: pruned old data", "rows", n)
	}
}

// Prune deletes data older than the retention now (it also runs every
// PruneInterval).
func (t *Tracker) Prune() { t.pruneNow() }
