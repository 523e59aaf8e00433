package classify

import (
	"context"
	"database/sql"
	"testing"

	"moat.dev/moat/internal/testutil/pgtest"
)

// The SQL store's tests (sqlite_test.go) run on every backend of
// testBackends; this file provides PostgreSQL's: a fresh database per test
// on the server named by MOAT_TEST_POSTGRES (a DSN with rights to create
// databases; scripts/test-deps.sh prints one). Without it the PostgreSQL
// subtests skip, or fail under MOAT_REQUIRE_TOOLS=1.

// postgresDatabase creates an empty database for t (dropped at its end)
// and returns its DSN.
func postgresDatabase(t testing.TB) string {
	t.Helper()
	return pgtest.Open(t).Fresh(t, "moat_classify_test")
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
