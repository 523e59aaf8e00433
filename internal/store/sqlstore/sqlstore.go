// Package sqlstore implements store.Store over database/sql for the embedded
// SQLite database (modernc.org/sqlite, pure Go) and for PostgreSQL (pgx).
// Both use the same SQL, written with ? placeholders and rebound for
// PostgreSQL, and the same numbered migrations embedded in the binary.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"

	"moat.dev/moat/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is a store.Store over a SQL database.
type DB struct {
	db     *sql.DB
	driver string
}

var _ store.Store = (*DB)(nil)

// OpenSQLite opens (creating if needed) the embedded database at path and
// migrates it.
func OpenSQLite(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := openCachedSQLite(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return open(ctx, db, "sqlite")
}

// OpenPostgres connects to PostgreSQL with a pgx DSN
// ("postgres://user:pass@host/db") and migrates it.
func OpenPostgres(ctx context.Context, dsn string) (*DB, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	db.SetMaxOpenConns(20)
	return open(ctx, db, "postgres")
}

// Open opens the store named by driver ("sqlite" with a path, or
// "postgres" with a DSN).
func Open(ctx context.Context, driver, dsn string) (*DB, error) {
	switch driver {
	case "", "sqlite":
		return OpenSQLite(ctx, dsn)
	case "postgres":
		return OpenPostgres(ctx, dsn)
	}
	return nil, fmt.Errorf("store: unknown driver %q (want sqlite or postgres)", driver)
}

func open(ctx context.Context, db *sql.DB, driver string) (*DB, error) {
	s := &DB{db: db, driver: driver}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect %s: %w", driver, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Rebind rewrites ? placeholders to $1, $2, ... for PostgreSQL.
func Rebind(driver, q string) string {
	if driver != "postgres" {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *DB) q(query string) string { return Rebind(s.driver, query) }

// migrateLockID is the PostgreSQL advisory lock that serializes migrate
// between gateway nodes sharing one database and starting together
// (concurrent CREATE TABLE IF NOT EXISTS of one table fails on PostgreSQL
// with a unique violation in pg_type, and two nodes could both see a
// migration as not applied yet).
const migrateLockID = 0x6d6f617473746f // "moatsto"

// startupLockID is the PostgreSQL advisory lock StartupLock takes.
const startupLockID = 0x6d6f61747374 // "moatst"

// StartupLock serializes the start of gateway nodes sharing one
// PostgreSQL database: the components create their tables (tracking,
// users, quarantine, tokens, greylist) with CREATE TABLE IF NOT EXISTS,
// which fails on PostgreSQL when two nodes run it at the same moment. It
// holds a session advisory lock on a connection of its own until release
// is called; on SQLite (one process) it does nothing.
func (s *DB) StartupLock(ctx context.Context) (release func(), err error) {
	if s.driver != "postgres" {
		return func() {}, nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: startup lock: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(startupLockID)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("store: startup lock: %w", err)
	}
	return func() {
		conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock($1)`, int64(startupLockID))
		conn.Close()
	}, nil
}

// migrate applies the embedded migrations not yet applied, each in its own
// transaction, recording them in schema_migrations. On PostgreSQL it holds
// an advisory lock on one connection for the whole run.
func (s *DB) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if s.driver == "postgres" {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(migrateLockID)); err != nil {
			return fmt.Errorf("store: migrate: lock: %w", err)
		}
		defer conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock($1)`, int64(migrateLockID))
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("store: migrations table: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		base := filepath.Base(name)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("store: migration %s: bad name", base)
		}
		var n int
		if err := conn.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
			return fmt.Errorf("store: migration %s: %w", base, err)
		}
		if n > 0 {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, stmt := range strings.Split(string(body), ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return fmt.Errorf("store: migration %s: %w", base, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`), v, base); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: migration %s: %w", base, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("store: migration %s: %w", base, err)
		}
	}
	return nil
}

func (s *DB) DB() *sql.DB    { return s.db }
func (s *DB) Driver() string { return s.driver }
func (s *DB) Close() error   { return s.db.Close() }

func normDomain(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

const domainCols = `name, partner, backends, tls, max_conns, recipient_mode, catch_all, policy`

func scanDomain(sc interface{ Scan(...any) error }) (*store.Domain, error) {
	var d store.Domain
	var backends string
	var catchAll int
	if err := sc.Scan(&d.Name, &d.Partner, &backends, &d.TLS, &d.MaxConns, &d.RecipientMode, &catchAll, &d.Policy); err != nil {
		return nil, err
	}
	d.CatchAll = catchAll != 0
	if err := json.Unmarshal([]byte(backends), &d.Backends); err != nil {
		return nil, fmt.Errorf("store: domain %s: backends: %w", d.Name, err)
	}
	return &d, nil
}

func (s *DB) Domain(ctx context.Context, name string) (*store.Domain, error) {
	row := s.db.QueryRowContext(ctx, s.q(`SELECT `+domainCols+` FROM domains WHERE name = ?`), normDomain(name))
	d, err := scanDomain(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	return d, err
}

func (s *DB) Domains(ctx context.Context) ([]store.Domain, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+domainCols+` FROM domains ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Domain
	for rows.Next() {
		d, err := scanDomain(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	return out, rows.Err()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *DB) PutDomain(ctx context.Context, d *store.Domain) error {
	name := normDomain(d.Name)
	if name == "" {
		return errors.New("store: domain name is empty")
	}
	backends, err := json.Marshal(d.Backends)
	if err != nil {
		return err
	}
	if d.Backends == nil {
		backends = []byte("[]")
	}
	tls := d.TLS
	if tls == "" {
		tls = "opportunistic"
	}
	mode := d.RecipientMode
	if mode == "" {
		mode = store.RecipientsAny
	}
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO domains (`+domainCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET partner = excluded.partner, backends = excluded.backends, tls = excluded.tls,
		max_conns = excluded.max_conns, recipient_mode = excluded.recipient_mode, catch_all = excluded.catch_all, policy = excluded.policy`),
		name, d.Partner, string(backends), tls, d.MaxConns, mode, b2i(d.CatchAll), d.Policy)
	return err
}

func (s *DB) DeleteDomain(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM recipients WHERE domain = ?`), normDomain(name)); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, s.q(`DELETE FROM domains WHERE name = ?`), normDomain(name))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return store.ErrNotFound
	}
	return tx.Commit()
}

func (s *DB) RecipientExists(ctx context.Context, domain, local string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM recipients WHERE domain = ? AND local = ?`),
		normDomain(domain), strings.ToLower(local)).Scan(&n)
	return n > 0, err
}

func (s *DB) Recipients(ctx context.Context, domain string) ([]store.Recipient, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT domain, local, kind, target FROM recipients WHERE domain = ? ORDER BY local`), normDomain(domain))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Recipient
	for rows.Next() {
		var r store.Recipient
		if err := rows.Scan(&r.Domain, &r.Local, &r.Kind, &r.Target); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *DB) PutRecipient(ctx context.Context, r store.Recipient) error {
	if r.Local == "" {
		return errors.New("store: recipient local part is empty")
	}
	kind := r.Kind
	if kind == "" {
		kind = "account"
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO recipients (domain, local, kind, target) VALUES (?, ?, ?, ?)
		ON CONFLICT (domain, local) DO UPDATE SET kind = excluded.kind, target = excluded.target`),
		normDomain(r.Domain), strings.ToLower(r.Local), kind, r.Target)
	return err
}

// ReplaceRecipients implements store.Store. The transaction writes
// before it reads (PostgreSQL: locks the domain's row; SQLite: takes the
// write lock), so concurrent replacements of one domain run one after
// the other, never interleaved.
func (s *DB) ReplaceRecipients(ctx context.Context, domain string, list []store.Recipient) (added, updated, removed int, err error) {
	domain = normDomain(domain)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE domains SET name = name WHERE name = ?`), domain); err != nil {
		return 0, 0, 0, err
	}
	rows, err := tx.QueryContext(ctx, s.q(`SELECT local, kind, target FROM recipients WHERE domain = ?`), domain)
	if err != nil {
		return 0, 0, 0, err
	}
	have := map[string]store.Recipient{}
	for rows.Next() {
		var r store.Recipient
		if err := rows.Scan(&r.Local, &r.Kind, &r.Target); err != nil {
			rows.Close()
			return 0, 0, 0, err
		}
		have[r.Local] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, 0, err
	}
	put := s.q(`INSERT INTO recipients (domain, local, kind, target) VALUES (?, ?, ?, ?)
		ON CONFLICT (domain, local) DO UPDATE SET kind = excluded.kind, target = excluded.target`)
	want := map[string]bool{}
	for _, r := range list {
		local := strings.ToLower(r.Local)
		if local == "" {
			return 0, 0, 0, errors.New("store: recipient local part is empty")
		}
		want[local] = true
		kind := r.Kind
		if kind == "" {
			kind = "account"
		}
		old, ok := have[local]
		if ok && old.Kind == kind && old.Target == r.Target {
			continue
		}
		if _, err := tx.ExecContext(ctx, put, domain, local, kind, r.Target); err != nil {
			return 0, 0, 0, err
		}
		if ok {
			updated++
		} else {
			added++
		}
	}
	del := s.q(`DELETE FROM recipients WHERE domain = ? AND local = ?`)
	for local := range have {
		if want[local] {
			continue
		}
		if _, err := tx.ExecContext(ctx, del, domain, local); err != nil {
			return 0, 0, 0, err
		}
		removed++
	}
	return added, updated, removed, tx.Commit()
}

func (s *DB) DeleteRecipient(ctx context.Context, domain, local string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM recipients WHERE domain = ? AND local = ?`), normDomain(domain), strings.ToLower(local))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return store.ErrNotFound
	}
	return nil
}
