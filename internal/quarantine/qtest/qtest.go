// Package qtest holds test helpers for the quarantine and the web UI:
// an Enqueuer that delivers at once over real SMTP (until the queue and
// relay are wired in tests), adapters from the real clamd client and the
// real classifier to the quarantine's Scanner and Learner interfaces, and
// an SQLite database opener.
package qtest

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/smtp"
	"path/filepath"
	"sync"
	"testing"

	_ "modernc.org/sqlite"

	"moat.dev/moat/internal/clamd"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/testutil/pgtest"
)

// DB opens a fresh SQLite database in t.TempDir().
func DB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "moat.db"))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	for _, p := range []string{"PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000"} {
		if _, err := db.Exec(p); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// PostgresDB opens a fresh, empty PostgreSQL database on the server of
// MOAT_TEST_POSTGRES (see pgtest: skipped when unset, unless
// MOAT_REQUIRE_TOOLS=1). It is dropped when t ends.
func PostgresDB(t testing.TB) *sql.DB {
	t.Helper()
	srv := pgtest.Open(t)
	db, err := sql.Open("pgx", srv.Fresh(t, "moat_qtest"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// SMTPEnqueuer "queues" a message by delivering it at once over SMTP to
// Addr (an internal/sink in tests), with the envelope's prepended fields in
// front of the body, the way the relay will.
type SMTPEnqueuer struct {
	Addr string
	mu   sync.Mutex
	n    int
	Envs []*queue.Envelope
}

// Enqueue implements quarantine.Enqueuer.
func (q *SMTPEnqueuer) Enqueue(env *queue.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	var rcpts []string
	for _, r := range env.Rcpts {
		rcpts = append(rcpts, r.Addr)
	}
	msg := append([]byte(env.Prepend), b...)
	if err := smtp.SendMail(q.Addr, nil, env.From, rcpts, msg); err != nil {
		return "", err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.n++
	q.Envs = append(q.Envs, env)
	return fmt.Sprintf("q%d", q.n), nil
}

// Count returns how many messages were enqueued.
func (q *SMTPEnqueuer) Count() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// ClamScanner adapts the clamd client to quarantine.Scanner.
type ClamScanner struct{ C *clamd.Client }

// Scan implements quarantine.Scanner.
func (s ClamScanner) Scan(ctx context.Context, r io.Reader) (bool, string, error) {
	res, err := s.C.Scan(ctx, r)
	return res.Infected, res.Signature, err
}

// Learner adapts the classifier to quarantine.Learner.
type Learner struct{ C *classify.Classifier }

func parse(raw []byte) *message.Message { return message.ParseBytes(raw, message.DefaultLimits()) }

// Learn implements quarantine.Learner.
func (l Learner) Learn(ctx context.Context, raw []byte, spam bool, user string) error {
	lab := classify.Ham
	if spam {
		lab = classify.Spam
	}
	_, err := l.C.Correct(ctx, user, parse(raw), lab)
	return err
}

// Score implements quarantine.Learner: the spam probability.
func (l Learner) Score(ctx context.Context, raw []byte, user string) (float64, error) {
	r, err := l.C.Classify(ctx, user, parse(bytes.Clone(raw)), false)
	return r.Prob, err
}
