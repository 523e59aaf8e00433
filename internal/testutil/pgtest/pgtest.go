// Package pgtest gives tests fresh, empty PostgreSQL databases on the
// server named by the environment variable MOAT_TEST_POSTGRES (a
// postgres:// DSN whose role may create databases; scripts/test-deps.sh
// prints one).
//
// When MOAT_TEST_POSTGRES is not set the test is skipped, unless
// MOAT_REQUIRE_TOOLS=1 (CI), in which case it fails.
//
// Typical use:
//
//	srv := pgtest.Open(t)
//	dsn := srv.Fresh(t, "moat_api_test") // dropped when t ends
//	st, err := sqlstore.OpenPostgres(ctx, dsn)
package pgtest

import (
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// Server is the PostgreSQL server of MOAT_TEST_POSTGRES.
type Server struct {
	// DSN is MOAT_TEST_POSTGRES.
	DSN   string
	admin *sql.DB
}

// Open returns the server, or skips t (fails it with MOAT_REQUIRE_TOOLS=1)
// when MOAT_TEST_POSTGRES is not set. Its admin connection is closed when t
// ends.
func Open(t testing.TB) *Server {
	t.Helper()
	dsn := os.Getenv("MOAT_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatal("MOAT_TEST_POSTGRES is not set")
		}
		t.Skip("MOAT_TEST_POSTGRES is not set")
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return &Server{DSN: dsn, admin: admin}
}

var seq atomic.Int64

// Fresh creates an empty database named prefix_PID_N and returns its DSN.
// The database is dropped (closing its sessions) when t ends; t may be a
// subtest of the one that called Open.
func (s *Server) Fresh(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), seq.Add(1))
	if _, err := s.admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })
	return WithDB(s.DSN, name)
}

// WithDB replaces the database name of a postgres:// DSN.
func WithDB(dsn, db string) string {
	// postgres://user:pass@host:port/dbname?params
	q := ""
	if i := strings.IndexByte(dsn, '?'); i >= 0 {
		dsn, q = dsn[:i], dsn[i:]
	}
	if i := strings.LastIndexByte(dsn, '/'); i > len("postgres://") {
		dsn = dsn[:i]
	}
	return dsn + "/" + db + q
}
