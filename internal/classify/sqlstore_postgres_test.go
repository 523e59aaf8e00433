package classify

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// The SQL store's tests (sqlite_test.go) run on every backend of
// testBackends; this file provides PostgreSQL's: a fresh database per test
// on the server named by MOAT_TEST_POSTGRES (a DSN with rights to create
// databases; scripts/test-deps.sh prints one). Without it the PostgreSQL
// subtests skip, or fail under MOAT_REQUIRE_TOOLS=1.

var pgSeq atomic.Int64

// postgresDSN returns MOAT_TEST_POSTGRES, skipping (or failing) without it.
func postgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("MOAT_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatal("MOAT_TEST_POSTGRES is not set")
		}
		t.Skip("MOAT_TEST_POSTGRES is not set")
	}
	return dsn
}

// postgresDatabase creates an empty database for t (dropped at its end)
// and returns its DSN.
func postgresDatabase(t testing.TB) string {
	t.Helper()
	dsn := postgresDSN(t)
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("moat_classify_test_%d_%d", os.Getpid(), pgSeq.Add(1))
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs after the pools opened later are closed
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	})
	return pgWithDB(dsn, name)
}

// postgresPools returns a function that opens a pool (migrated) on one
// fresh database: each call another pool, as another process would.
func postgresPools(t testing.TB) func() *sql.DB {
	dsn := postgresDatabase(t)
	return func() *sql.DB {
		t.Helper()
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if err := MigrateDriver(context.Background(), db, "postgres"); err != nil {
			t.Fatal(err)
		}
		return db
	}
}

// pgWithDB replaces the database name of a postgres:// DSN.
func pgWithDB(dsn, db string) string {
	q := ""
	if i := strings.IndexByte(dsn, '?'); i >= 0 {
		dsn, q = dsn[:i], dsn[i:]
	}
	if i := strings.LastIndexByte(dsn, '/'); i > len("postgres://") {
		dsn = dsn[:i]
	}
	return dsn + "/" + db + q
}

// TestPostgresMigrateConcurrent: gateway nodes starting together migrate
// the shared database at the same time without failing, and again later.
func TestPostgresMigrateConcurrent(t *testing.T) {
	dsn := postgresDatabase(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			db, err := sql.Open("pgx", dsn)
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			errs <- MigrateDriver(context.Background(), db, "postgres")
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'classify\_%'`).Scan(&n); err != nil || n != 4 {
		t.Fatalf("%d classify tables, %v", n, err)
	}
	var typ string
	if err := db.QueryRow(`SELECT data_type FROM information_schema.columns WHERE table_name = 'classify_tokens' AND column_name = 'key'`).Scan(&typ); err != nil || typ != "bigint" {
		t.Fatalf("key column type %q, %v", typ, err)
	}
}
