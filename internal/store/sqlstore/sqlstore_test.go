package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/storetest"
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

var pgSeq atomic.Int64

// TestPostgres runs the conformance suite against a real PostgreSQL server
// named by MOAT_TEST_POSTGRES (a DSN with rights to create databases).
func TestPostgres(t *testing.T) {
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
	defer admin.Close()
	storetest.Run(t, func(t *testing.T) store.Store {
		name := fmt.Sprintf("moat_test_%d_%d", os.Getpid(), pgSeq.Add(1))
		if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })
		s, err := OpenPostgres(context.Background(), withDB(dsn, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// withDB replaces the database name of a postgres:// DSN.
func withDB(dsn, db string) string {
	// postgres://user:pass@host:port/dbname?params
	q := ""
	if i := indexByte(dsn, '?'); i >= 0 {
		dsn, q = dsn[:i], dsn[i:]
	}
	if i := lastIndexByte(dsn, '/'); i > len("postgres://") {
		dsn = dsn[:i]
	}
	return dsn + "/" + db + q
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func lastIndexByte(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
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
