package tracking

import (
	"context"
	"database/sql"
	"fmt"
)

// schema is plain SQL accepted by both SQLite and PostgreSQL. Times are
// Unix microseconds.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS tracking_messages (
		queue_id   TEXT PRIMARY KEY,
		first_seen BIGINT NOT NULL,
		last_seen  BIGINT NOT NULL,
		has_txn    INTEGER NOT NULL DEFAULT 0,
		conn_id    TEXT NOT NULL DEFAULT '',
		client_ip  TEXT NOT NULL DEFAULT '',
		helo       TEXT NOT NULL DEFAULT '',
		from_addr  TEXT NOT NULL DEFAULT '',
		size       BIGINT NOT NULL DEFAULT 0,
		action     TEXT NOT NULL DEFAULT '',
		outcome    TEXT NOT NULL DEFAULT '',
		score      DOUBLE PRECISION NOT NULL DEFAULT 0,
		symbols    TEXT NOT NULL DEFAULT '',
		reason     TEXT NOT NULL DEFAULT '',
		reason_key TEXT NOT NULL DEFAULT '',
		reply      TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS tracking_messages_first_seen ON tracking_messages (first_seen)`,
	`CREATE INDEX IF NOT EXISTS tracking_messages_last_seen ON tracking_messages (last_seen)`,
	`CREATE INDEX IF NOT EXISTS tracking_messages_client_ip ON tracking_messages (client_ip, first_seen)`,
	`CREATE TABLE IF NOT EXISTS tracking_events (
		queue_id TEXT NOT NULL,
		ts       BIGINT NOT NULL,
		seq      BIGINT NOT NULL,
		level    TEXT NOT NULL DEFAULT '',
		kind     TEXT NOT NULL DEFAULT '',
		msg      TEXT NOT NULL DEFAULT '',
		rcpt     TEXT NOT NULL DEFAULT '',
		domain   TEXT NOT NULL DEFAULT '',
		host     TEXT NOT NULL DEFAULT '',
		outcome  TEXT NOT NULL DEFAULT '',
		reply    TEXT NOT NULL DEFAULT '',
		detail   TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS tracking_events_queue_id ON tracking_events (queue_id, ts, seq)`,
	`CREATE INDEX IF NOT EXISTS tracking_events_ts ON tracking_events (ts)`,
	`CREATE TABLE IF NOT EXISTS tracking_rcpts (
		queue_id   TEXT NOT NULL,
		rcpt       TEXT NOT NULL,
		domain     TEXT NOT NULL DEFAULT '',
		first_seen BIGINT NOT NULL,
		PRIMARY KEY (queue_id, rcpt)
	)`,
	`CREATE INDEX IF NOT EXISTS tracking_rcpts_domain ON tracking_rcpts (domain, first_seen)`,
	`CREATE INDEX IF NOT EXISTS tracking_rcpts_first_seen ON tracking_rcpts (first_seen)`,
}

// Migrate creates the tracking tables and indexes if they do not exist.
// It is idempotent and works on SQLite and PostgreSQL.
func Migrate(ctx context.Context, db *sql.DB) error {
	for _, s := range schema {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("tracking: migrate: %w", err)
		}
	}
	return nil
}
