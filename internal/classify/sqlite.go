package classify

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Schema is the classifier's tables. Keys are the 63/64-bit feature keys
// stored as signed INTEGER (bit pattern preserved).
const Schema = `
CREATE TABLE IF NOT EXISTS classify_tokens (
	scope TEXT NOT NULL,
	key   INTEGER NOT NULL,
	ham   INTEGER NOT NULL DEFAULT 0,
	spam  INTEGER NOT NULL DEFAULT 0,
	w     REAL NOT NULL DEFAULT 0,
	g     REAL NOT NULL DEFAULT 0,
	PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS classify_totals (
	scope TEXT PRIMARY KEY,
	ham   INTEGER NOT NULL DEFAULT 0,
	spam  INTEGER NOT NULL DEFAULT 0,
	bias  REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS classify_lessons (
	scope      TEXT NOT NULL,
	fp         BLOB NOT NULL,
	label      INTEGER NOT NULL,
	learned_at INTEGER NOT NULL,
	PRIMARY KEY (scope, fp)
) WITHOUT ROWID;
`

// Migrate creates the classifier's tables if they do not exist.
func Migrate(ctx context.Context, db *sql.DB) error {
	for _, stmt := range strings.Split(Schema, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("classify: migrate: %w", err)
		}
	}
	return nil
}

// OpenSQLite opens (creating) a SQLite database file in WAL mode, for
// standalone use (moat learn/classify without a configured store).
func OpenSQLite(path string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// SQLStore is a TokenStore in SQLite.
type SQLStore struct {
	db *sql.DB
}

// NewSQLStore returns a store over db; call Migrate first.
func NewSQLStore(db *sql.DB) *SQLStore { return &SQLStore{db: db} }

const (
	getChunk    = 500
	upsertChunk = 500
)

var (
	upsertMu    sync.Mutex
	upsertCache = map[int]string{}
)

// upsertSQL returns the multi-row upsert statement for n rows.
func upsertSQL(n int) string {
	upsertMu.Lock()
	defer upsertMu.Unlock()
	if q, ok := upsertCache[n]; ok {
		return q
	}
	var b strings.Builder
	b.WriteString("INSERT INTO classify_tokens(scope, key, ham, spam, w, g) VALUES ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?)")
	}
	b.WriteString(" ON CONFLICT(scope, key) DO UPDATE SET ham = ham + excluded.ham, spam = spam + excluded.spam, w = w + excluded.w, g = g + excluded.g")
	q := b.String()
	if len(upsertCache) < 64 {
		upsertCache[n] = q
	}
	return q
}

// Get implements TokenStore.
func (s *SQLStore) Get(ctx context.Context, scope string, keys []uint64) ([]Row, error) {
	out := make([]Row, len(keys))
	pos := make(map[int64][]int, len(keys))
	for i, k := range keys {
		pos[int64(k)] = append(pos[int64(k)], i)
	}
	uniq := make([]int64, 0, len(pos))
	for k := range pos {
		uniq = append(uniq, k)
	}
	slices.Sort(uniq) // B-tree locality
	args := make([]any, 0, getChunk+1)
	for start := 0; start < len(uniq); start += getChunk {
		end := min(start+getChunk, len(uniq))
		args = append(args[:0], scope)
		for _, k := range uniq[start:end] {
			args = append(args, k)
		}
		q := "SELECT key, ham, spam, w, g FROM classify_tokens WHERE scope = ? AND key IN (?" + strings.Repeat(",?", end-start-1) + ")"
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var k int64
			var r Row
			if err := rows.Scan(&k, &r.Ham, &r.Spam, &r.W, &r.G); err != nil {
				rows.Close()
				return nil, err
			}
			for _, i := range pos[k] {
				out[i] = r
			}
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Update implements TokenStore: one transaction per batch.
func (s *SQLStore) Update(ctx context.Context, scope string, b Batch) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	// Multi-row upserts, upsertChunk rows per statement, in key order.
	slices.SortFunc(b.Deltas, func(x, y Delta) int { return cmp.Compare(int64(x.Key), int64(y.Key)) })
	var shrink []int64
	args := make([]any, 0, upsertChunk*6)
	for start := 0; start < len(b.Deltas); start += upsertChunk {
		end := min(start+upsertChunk, len(b.Deltas))
		args = args[:0]
		for _, d := range b.Deltas[start:end] {
			args = append(args, scope, int64(d.Key), d.Ham, d.Spam, d.W, d.G)
			if d.Ham < 0 || d.Spam < 0 {
				shrink = append(shrink, int64(d.Key))
			}
		}
		q := upsertSQL(end - start)
		if _, err = tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	if len(shrink) > 0 {
		del, err := tx.PrepareContext(ctx, `DELETE FROM classify_tokens WHERE scope = ? AND key = ? AND ham <= 0 AND spam <= 0 AND w = 0 AND g = 0`)
		if err != nil {
			return err
		}
		defer del.Close()
		for _, k := range shrink {
			if _, err = del.ExecContext(ctx, scope, k); err != nil {
				return err
			}
		}
	}
	if _, err = tx.ExecContext(ctx, `INSERT INTO classify_totals(scope, ham, spam, bias) VALUES(?,?,?,?)
		ON CONFLICT(scope) DO UPDATE SET ham = ham + excluded.ham, spam = spam + excluded.spam, bias = bias + excluded.bias`,
		scope, b.Totals.Ham, b.Totals.Spam, b.Totals.Bias); err != nil {
		return err
	}
	if l := b.Lesson; l != nil {
		if l.Label == Unknown {
			_, err = tx.ExecContext(ctx, `DELETE FROM classify_lessons WHERE scope = ? AND fp = ?`, scope, l.FP[:])
		} else {
			_, err = tx.ExecContext(ctx, `INSERT INTO classify_lessons(scope, fp, label, learned_at) VALUES(?,?,?,?)
				ON CONFLICT(scope, fp) DO UPDATE SET label = excluded.label, learned_at = excluded.learned_at`,
				scope, l.FP[:], int(l.Label), time.Now().Unix())
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Totals implements TokenStore.
func (s *SQLStore) Totals(ctx context.Context, scope string) (Totals, error) {
	var t Totals
	err := s.db.QueryRowContext(ctx, `SELECT ham, spam, bias FROM classify_totals WHERE scope = ?`, scope).Scan(&t.Ham, &t.Spam, &t.Bias)
	if err == sql.ErrNoRows {
		return Totals{}, nil
	}
	return t, err
}

// Lesson implements TokenStore.
func (s *SQLStore) Lesson(ctx context.Context, scope string, fp [32]byte) (Label, error) {
	var l int
	err := s.db.QueryRowContext(ctx, `SELECT label FROM classify_lessons WHERE scope = ? AND fp = ?`, scope, fp[:]).Scan(&l)
	if err == sql.ErrNoRows {
		return Unknown, nil
	}
	return Label(l), err
}

// Size implements TokenStore.
func (s *SQLStore) Size(ctx context.Context, scope string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM classify_tokens WHERE scope = ?`, scope).Scan(&n)
	return n, err
}
