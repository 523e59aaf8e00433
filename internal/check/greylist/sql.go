package greylist

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"moat.dev/moat/internal/store/sqlstore"
)

// Schema is the greylisting table for the store's database (SQLite and
// PostgreSQL). Times are Unix seconds. Expired rows can be deleted with
// Cleanup.
const Schema = `CREATE TABLE IF NOT EXISTS greylist (
	triplet    TEXT PRIMARY KEY,
	first_seen BIGINT NOT NULL,
	passed     INTEGER NOT NULL DEFAULT 0,
	expires    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS greylist_expires ON greylist (expires);`

// SQLStore keeps greylisting state in a database with Schema applied.
// Driver is "sqlite" or "postgres" (placeholder syntax).
type SQLStore struct {
	DB     *sql.DB
	Driver string
}

func (s SQLStore) q(query string) string { return sqlstore.Rebind(s.Driver, query) }

// Get implements Store.
func (s SQLStore) Get(ctx context.Context, key string) (Entry, bool, error) {
	var first, exp int64
	var passed int
	err := s.DB.QueryRowContext(ctx, s.q(`SELECT first_seen, passed, expires FROM greylist WHERE triplet = ?`), key).Scan(&first, &passed, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	return Entry{First: time.Unix(first, 0), Passed: passed != 0, Expires: time.Unix(exp, 0)}, true, nil
}

// Put implements Store.
func (s SQLStore) Put(ctx context.Context, key string, e Entry) error {
	passed := 0
	if e.Passed {
		passed = 1
	}
	_, err := s.DB.ExecContext(ctx, s.q(`INSERT INTO greylist (triplet, first_seen, passed, expires) VALUES (?, ?, ?, ?)
		ON CONFLICT (triplet) DO UPDATE SET first_seen = excluded.first_seen, passed = excluded.passed, expires = excluded.expires`),
		key, e.First.Unix(), passed, e.Expires.Unix())
	return err
}

// Cleanup deletes rows expired before now.
func (s SQLStore) Cleanup(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.DB.ExecContext(ctx, s.q(`DELETE FROM greylist WHERE expires < ?`), now.Unix())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
