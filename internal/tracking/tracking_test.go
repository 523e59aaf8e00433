package tracking

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"moat.dev/moat/internal/store/sqlstore"
	"moat.dev/moat/internal/testutil/pgtest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func openSQLite(t *testing.T) (*sql.DB, string) {
	t.Helper()
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "moat.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.DB(), st.Driver()
}

func newTracker(t *testing.T, db *sql.DB, driver string, mod func(*Config)) *Tracker {
	t.Helper()
	cfg := DefaultConfig()
	cfg.FlushInterval = 20 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(context.Background(), cfg, db, driver, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func flush(t *testing.T, tr *Tracker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// logSession logs what the SMTP server and the queue log for one accepted
// message with two recipients and one rejected transaction.
func logSession(log *slog.Logger, qid string, at time.Time) {
	conn := log.With("conn_id", "c"+qid, "ip", "192.0.2.7")
	conn.Info(TxnMessage, "queue_id", qid, "helo", "mail.sender.test", "from", "Alice@Sender.TEST",
		"rcpts", []string{"Bob@Example.COM", "carol@other.org"}, "refused_rcpts", 0, "size", int64(4321),
		"outcome", "tagged", "reply", "250 2.0.0 Ok: queued as "+qid, "elapsed", 3*time.Millisecond,
		"action", "tag", "score", 6.5, "symbols", []string{"RDNS_NONE", "BAYES_SPAM"}, "reason", "score 6.5 >= tag 5")
	q := log.With("queue_id", qid, "domain", "example.com")
	q.Warn("queue: deferred", "rcpt", "Bob@Example.COM", "reply", "451 4.3.0 try later", "host", "mx1.example.com:25", "attempts", 1)
	q.Info("queue: delivered", "rcpt", "Bob@Example.COM", "reply", "250 2.0.0 ok", "host", "mx2.example.com:25", "attempts", 2)
	log.With("queue_id", qid, "domain", "other.org").Info("queue: delivered", "rcpt", "carol@other.org", "reply", "250 ok", "host", "mx.other.org:25")
	log.Debug("debug line", "queue_id", qid) // below Info: not tracked
	log.Info("unrelated line", "x", 1)       // no queue_id: not tracked
}

func testTrackerStore(t *testing.T, db *sql.DB, driver string) {
	ctx := context.Background()
	tr := newTracker(t, db, driver, nil)
	tr.Start(ctx)
	var out syncBuf
	log := slog.New(Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}), tr))

	logSession(log, "Q1AAAA", time.Now())
	// A transaction refused at RCPT: no queue ID, tracked under the conn.
	log.With("conn_id", "cz9", "ip", "198.51.100.9").Info(TxnMessage, "queue_id", "", "helo", "bot", "from", "spam@bad.test",
		"rcpts", []string{}, "refused_rcpts", 1, "size", 0, "outcome", "no_data", "reply", "550 5.1.1 <nobody@example.com>: no such user",
		"refused", []string{"nobody@example.com: 550 5.1.1 <nobody@example.com>: no such user"})
	// A transaction rejected by policy.
	log.With("conn_id", "c77", "ip", "198.51.100.10").Info(TxnMessage, "queue_id", "Q2BBBB", "from", "x@bad.test",
		"rcpts", []string{"dave@example.com"}, "outcome", "rejected", "reply", "550 5.7.1 Message refused by policy",
		"action", "reject", "score", 2.0, "symbols", []string{"DNSBL_ZEN"}, "reason", "dnsbl: listed in zen.example")
	flush(t, tr)

	// Every record reached the next handler, including the untracked ones.
	for _, want := range []string{"queue: deferred", "debug line", "unrelated line", "msg=\"smtp transaction\""} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("next handler did not get %q:\n%s", want, out.String())
		}
	}

	ms, err := tr.Search(ctx, Query{QueueID: "Q1AAAA"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("by queue id: %d messages", len(ms))
	}
	m := ms[0]
	if m.ClientIP != "192.0.2.7" || m.ConnID != "cQ1AAAA" || m.From != "Alice@Sender.TEST" || m.Helo != "mail.sender.test" ||
		m.Action != "tagged" || m.Score != 6.5 || m.Size != 4321 || strings.Join(m.Symbols, ",") != "RDNS_NONE,BAYES_SPAM" {
		t.Errorf("summary = %+v", m)
	}
	if strings.Join(m.Rcpts, ",") != "bob@example.com,carol@other.org" {
		t.Errorf("rcpts = %v", m.Rcpts)
	}
	if len(m.Deliveries) != 3 || m.Deliveries[0].Outcome != "deferred" || m.Deliveries[1].Outcome != "delivered" ||
		m.Deliveries[0].Host != "mx1.example.com:25" {
		t.Errorf("deliveries = %+v", m.Deliveries)
	}
	if len(m.Status) != 2 || m.Status[0].Outcome != "delivered" || m.Status[0].Host != "mx2.example.com:25" {
		t.Errorf("status = %+v", m.Status)
	}

	evs, err := tr.Events(ctx, "Q1AAAA")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind+":"+e.Msg)
	}
	if got := strings.Join(kinds, "|"); got != "txn:smtp transaction|delivery:queue: deferred|delivery:queue: delivered|delivery:queue: delivered" {
		t.Errorf("events = %s", got)
	}
	if !strings.Contains(evs[0].Detail, `refused_rcpts="0"`) {
		t.Errorf("detail = %q", evs[0].Detail)
	}

	count := func(q Query) int {
		t.Helper()
		ms, err := tr.Search(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return len(ms)
	}
	for name, c := range map[string]struct {
		q    Query
		want int
	}{
		"rcpt substring, case-insensitive": {Query{Rcpt: "BOB@EXAMPLE"}, 1},
		"rcpt domain":                      {Query{Rcpt: "example.com"}, 3},
		"refused rcpt found":               {Query{Rcpt: "nobody"}, 1},
		"rcpt no match":                    {Query{Rcpt: "nobody-else"}, 0},
		"rcpt like wildcard is literal":    {Query{Rcpt: "%"}, 0},
		"from substring":                   {Query{From: "alice@sender"}, 1},
		"client ip":                        {Query{ClientIP: "198.51.100.9"}, 1},
		"action rejected":                  {Query{Action: "rejected"}, 2},
		"since future":                     {Query{Since: time.Now().Add(time.Hour)}, 0},
		"until past":                       {Query{Until: time.Now().Add(-time.Hour)}, 0},
		"all":                              {Query{}, 3},
		"limit":                            {Query{Limit: 2}, 2},
		"scoped to example.com":            {Query{Scoped: true, Domains: []string{"Example.com"}}, 3},
		"scoped to other.org":              {Query{Scoped: true, Domains: []string{"other.org"}}, 1},
		"scoped to nothing":                {Query{Scoped: true}, 0},
	} {
		if got := count(c.q); got != c.want {
			t.Errorf("%s: %d messages, want %d", name, got, c.want)
		}
	}

	ms, err = tr.Search(ctx, Query{ClientIP: "198.51.100.9"})
	if err != nil || len(ms) != 1 {
		t.Fatal(ms, err)
	}
	if !strings.HasPrefix(ms[0].QueueID, "cz9.") || ms[0].Action != "rejected" || ms[0].Outcome != "no_data" {
		t.Errorf("refused-at-RCPT transaction = %+v", ms[0])
	}
	if _, err := tr.Message(ctx, "Q2BBBB", true, []string{"other.org"}); err != ErrNotFound {
		t.Errorf("scoped Message of another domain's message: %v", err)
	}

	st, err := tr.Stats(ctx, StatsQuery{Since: time.Now().Add(-time.Hour), Bucket: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if st.Totals["tagged"] != 1 || st.Totals["rejected"] != 2 || st.Totals["delivered"] != 0 {
		t.Errorf("totals = %v", st.Totals)
	}
	var sum int64
	for _, b := range st.Buckets {
		sum += b.Counts["rejected"] + b.Counts["tagged"]
	}
	if sum != 3 || len(st.Buckets) < 6 || len(st.Buckets) > 8 {
		t.Errorf("buckets: %d, sum %d", len(st.Buckets), sum)
	}
	if st.Deliveries["delivered"] != 2 || st.Deliveries["deferred"] != 1 {
		t.Errorf("deliveries = %v", st.Deliveries)
	}
	if got := fmt.Sprint(st.Reasons["example.com"]); got != "[{5.1.1 1} {dnsbl 1}]" { // the refused recipient counts for its domain
		t.Errorf("reasons for example.com = %s (all: %v)", got, st.Reasons)
	}
	st, err = tr.Stats(ctx, StatsQuery{Since: time.Now().Add(-time.Hour), Bucket: time.Hour, Scoped: true, Domains: []string{"other.org"}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Totals["tagged"] != 1 || st.Totals["rejected"] != 0 || st.Deliveries["delivered"] != 1 || len(st.Reasons) != 0 {
		t.Errorf("scoped stats = %+v", st)
	}
	if _, err := tr.Stats(ctx, StatsQuery{Since: time.Now().Add(-30 * 24 * time.Hour), Bucket: time.Second}); err == nil {
		t.Error("too many buckets accepted")
	}

	// A second batch for the same queue ID keeps the transaction's data
	// and extends last_seen.
	log.With("queue_id", "Q1AAAA").Info("queue: message done")
	flush(t, tr)
	m2, err := tr.Message(ctx, "Q1AAAA", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m2.From != m.From || m2.Action != "tagged" || m2.LastSeen.Before(m.LastSeen) || !m2.FirstSeen.Equal(m.FirstSeen) {
		t.Errorf("after a later event: %+v", m2)
	}
}

func TestTrackerSQLite(t *testing.T) {
	db, driver := openSQLite(t)
	testTrackerStore(t, db, driver)
}

// TestTrackerPostgres runs the same test against a fresh database on the
// PostgreSQL server named by MOAT_TEST_POSTGRES.
func TestTrackerPostgres(t *testing.T) {
	srv := pgtest.Open(t)
	st, err := sqlstore.OpenPostgres(context.Background(), srv.Fresh(t, "moat_tracking_test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	testTrackerStore(t, st.DB(), st.Driver())
}

// TestFullBufferDrops: with the writer not running and a one-slot buffer,
// logging never blocks; the overflow is counted.
func TestFullBufferDrops(t *testing.T) {
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, func(c *Config) { c.Buffer = 1 })
	log := slog.New(Handler(slog.DiscardHandler, tr))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			log.Info("queue: delivered", "queue_id", fmt.Sprint("Q", i), "rcpt", "a@example.com")
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("logging blocked on a full tracking buffer")
	}
	if got := counterValue(t, tr.m.dropped); got != 99 {
		t.Errorf("dropped = %v, want 99", got)
	}
	// The one buffered event is written once the writer runs.
	tr.Start(context.Background())
	flush(t, tr)
	ms, err := tr.Search(context.Background(), Query{})
	if err != nil || len(ms) != 1 || ms[0].QueueID != "Q0" {
		t.Fatalf("after start: %v %v", ms, err)
	}
}

// TestLevelsAndGroups: records the next handler filters out are still
// tracked; a queue_id inside a group is not a message's queue ID.
func TestLevelsAndGroups(t *testing.T) {
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, nil)
	tr.Start(context.Background())
	var out syncBuf
	log := slog.New(Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}), tr))
	log.Info("queue: delivered", "queue_id", "QINFO", "rcpt", "a@example.com")
	log.WithGroup("g").Info("grouped", "queue_id", "QGROUP")
	log.With("queue_id", "QWITH").WithGroup("g").Info("with then group", "k", "v")
	flush(t, tr)
	if out.String() != "" {
		t.Errorf("next handler got records below its level: %q", out.String())
	}
	ms, err := tr.Search(context.Background(), Query{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.QueueID)
	}
	got := strings.Join(ids, ",")
	if !strings.Contains(got, "QINFO") || !strings.Contains(got, "QWITH") || strings.Contains(got, "QGROUP") || len(ids) != 2 {
		t.Errorf("tracked ids = %s", got)
	}
	evs, err := tr.Events(context.Background(), "QWITH")
	if err != nil || len(evs) != 1 || evs[0].Detail != `g.k="v"` {
		t.Errorf("events = %+v, %v", evs, err)
	}
}

func TestRetention(t *testing.T) {
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, nil)
	tr.Start(context.Background())
	h := Handler(slog.DiscardHandler, tr)
	old := slog.NewRecord(time.Now().Add(-31*24*time.Hour), slog.LevelInfo, TxnMessage, 0)
	old.AddAttrs(slog.String("queue_id", "QOLD"), slog.Any("rcpts", []string{"a@example.com"}), slog.String("outcome", "queued"))
	h.Handle(context.Background(), old)
	slog.New(h).Info(TxnMessage, "queue_id", "QNEW", "rcpts", []string{"a@example.com"}, "outcome", "queued")
	flush(t, tr)
	if ms, _ := tr.Search(context.Background(), Query{}); len(ms) != 2 {
		t.Fatalf("before prune: %d", len(ms))
	}
	tr.Prune()
	ms, err := tr.Search(context.Background(), Query{})
	if err != nil || len(ms) != 1 || ms[0].QueueID != "QNEW" {
		t.Fatalf("after prune: %+v %v", ms, err)
	}
	for _, tab := range []string{"tracking_events", "tracking_rcpts"} {
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM " + tab).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: %d rows after prune (%v)", tab, n, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Retention = time.Minute
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "retention:") {
		t.Errorf("err = %v", err)
	}
}

func TestReasonKey(t *testing.T) {
	for _, c := range []struct{ action, reason, reply, want string }{
		{"rejected", "dnsbl: listed", "550 5.7.1 x", "dnsbl"},
		{"rejected", "score 16 >= reject 15", "550 5.7.1 x", "score"},
		{"rejected", "", "550 5.1.1 <a@b>: no such user", "5.1.1"},
		{"tempfailed", "", "451", "451"},
		{"delivered", "dnsbl: x", "250 ok", ""},
	} {
		if got := reasonKey(c.action, c.reason, c.reply); got != c.want {
			t.Errorf("reasonKey(%q, %q, %q) = %q, want %q", c.action, c.reason, c.reply, got, c.want)
		}
	}
}

// BenchmarkHandler measures the cost the handler adds to a log call.
func BenchmarkHandler(b *testing.B) {
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "moat.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	tr, err := New(context.Background(), DefaultConfig(), st.DB(), st.Driver(), nil, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	tr.Start(context.Background())
	defer tr.Close()
	log := slog.New(Handler(slog.DiscardHandler, tr)).With("conn_id", "c1", "ip", "192.0.2.1")
	b.Run("untracked", func(b *testing.B) {
		for b.Loop() {
			log.Info("hello", "k", 1)
		}
	})
	b.Run("tracked", func(b *testing.B) {
		for b.Loop() {
			log.Info("queue: delivered", "queue_id", "Q1", "rcpt", "a@example.com", "reply", "250 ok", "host", "mx:25")
		}
	})
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
