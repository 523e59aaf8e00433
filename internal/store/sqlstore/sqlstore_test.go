package sqlstore

import (
	"context"
	"path/filepath"
	"testing"

	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/storetest"
	"moat.dev/moat/internal/testutil/pgtest"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "moat.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestSQLiteReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "moat.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutDomain(ctx, &store.Domain{Name: "example.com"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenSQLite(ctx, path) // migrations must not run twice
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Domain(ctx, "example.com"); err != nil {
		t.Fatal(err)
	}
}

// TestPostgres runs the conformance suite against a real PostgreSQL server
// named by MOAT_TEST_POSTGRES (a DSN with rights to create databases).
func TestPostgres(t *testing.T) {
	srv := pgtest.Open(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := OpenPostgres(context.Background(), srv.Fresh(t, "moat_test"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRebind(t *testing.T) {
	if got := Rebind("postgres", "a = ? AND b = ?"); got != "a = $1 AND b = $2" {
		t.Fatal(got)
	}
	if got := Rebind("sqlite", "a = ?"); got != "a = ?" {
		t.Fatal(got)
	}
}

func TestParseBackend(t *testing.T) {
	for in, want := range map[string]string{"mx.example.com": "mx.example.com:25", "10.0.0.1:2525": "10.0.0.1:2525", "[2001:db8::1]:587": "[2001:db8::1]:587"} {
		b, err := store.ParseBackend(in)
		if err != nil || b.String() != want {
			t.Errorf("ParseBackend(%q) = %v, %v; want %s", in, b, err, want)
		}
	}
	for _, bad := range []string{"", "host:0", "host:99999", "2001:db8::1", "[::1", ":25"} {
		if _, err := store.ParseBackend(bad); err == nil {
			t.Errorf("ParseBackend(%q) accepted", bad)
		}
	}
}

// TestPostgresConcurrentMigrate starts several stores against one empty
// database at once, as gateway nodes sharing PostgreSQL do: every one must
// open (no "duplicate key ... pg_type_typname_nsp_index" from concurrent
// CREATE TABLE), and each migration must be recorded once.
func TestPostgresConcurrentMigrate(t *testing.T) {
	srv := pgtest.Open(t)
	dsn := srv.Fresh(t, "moat_migrate_race")
	ctx := context.Background()
	const nodes = 6
	errs := make(chan error, nodes)
	stores := make(chan *DB, nodes)
	start := make(chan struct{})
	for i := 0; i < nodes; i++ {
		go func() {
			<-start
			s, err := OpenPostgres(ctx, dsn)
			if err == nil {
				stores <- s
			}
			errs <- err
		}()
	}
	close(start)
	for i := 0; i < nodes; i++ {
		if err := <-errs; err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	close(stores)
	var s *DB
	for x := range stores {
		if s == nil {
			s = x
			continue
		}
		x.Close()
	}
	if s == nil {
		t.Fatal("no store opened")
	}
	defer s.Close()
	var n int
	if err := s.DB().QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("schema_migrations has %d rows, want 1", n)
	}
}
