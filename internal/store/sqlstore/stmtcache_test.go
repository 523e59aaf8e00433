package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func openCacheTest(t *testing.T) *DB {
	t.Helper()
	st, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "moat.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.DB().Exec(`CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := st.DB().Exec(`INSERT INTO kv (k, v) VALUES (?, ?)`, i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// The same SQL run again while its first result set is still being read
// (one connection, inside a transaction) must not disturb the first one.
func TestStmtCacheNestedSameQuery(t *testing.T) {
	st := openCacheTest(t)
	ctx := context.Background()
	tx, err := st.DB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	const q = `SELECT k, v FROM kv WHERE k >= ? ORDER BY k`
	outer, err := tx.QueryContext(ctx, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for outer.Next() {
		var k int
		var v string
		if err := outer.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, k)
		// Same text, other argument, same connection, outer still open.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM kv WHERE k >= ?`, k).Scan(&n); err != nil {
			t.Fatal(err)
		}
		inner, err := tx.QueryContext(ctx, q, 4)
		if err != nil {
			t.Fatal(err)
		}
		var ks []int
		for inner.Next() {
			var k2 int
			var v2 string
			if err := inner.Scan(&k2, &v2); err != nil {
				t.Fatal(err)
			}
			ks = append(ks, k2)
		}
		if err := inner.Close(); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ks) != "[4 5]" {
			t.Fatalf("inner query got %v, want [4 5]", ks)
		}
		if n != 6-k {
			t.Fatalf("count(k >= %d) = %d, want %d", k, n, 6-k)
		}
	}
	if err := outer.Err(); err != nil {
		t.Fatal(err)
	}
	outer.Close()
	if fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("outer query got %v, want [1 2 3 4 5]", got)
	}
}

// More distinct statements than the cache holds: evicted statements are
// finalized and prepared again when needed; results stay right.
func TestStmtCacheEviction(t *testing.T) {
	st := openCacheTest(t)
	db := st.DB()
	db.SetMaxOpenConns(1) // one connection: every statement lands in one cache
	for round := 0; round < 3; round++ {
		for i := 0; i < stmtCacheSize*2; i++ {
			var v string
			// A distinct SQL text per i (the literal), same answer.
			q := fmt.Sprintf(`SELECT v FROM kv WHERE k = ? AND %d = %d`, i, i)
			if err := db.QueryRow(q, 1+i%5).Scan(&v); err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprint("v", 1+i%5); v != want {
				t.Fatalf("round %d query %d: got %q, want %q", round, i, v, want)
			}
		}
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		c := dc.(*cachingConn)
		if n := len(c.stmts); n > stmtCacheSize {
			return fmt.Errorf("cache holds %d statements, limit %d", n, stmtCacheSize)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A cached statement keeps working after the schema changes under it, and
// writes through cached statements are visible to other connections.
func TestStmtCacheSchemaChangeAndWrites(t *testing.T) {
	st := openCacheTest(t)
	db := st.DB()
	const q = `SELECT v FROM kv WHERE k = ?`
	var v string
	if err := db.QueryRow(q, 2).Scan(&v); err != nil || v != "v2" {
		t.Fatalf("got %q, %v", v, err)
	}
	if _, err := db.Exec(`ALTER TABLE kv ADD COLUMN extra TEXT NOT NULL DEFAULT ''`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE kv SET v = ? WHERE k = ?`, "new", 2); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(q, 2).Scan(&v); err != nil || v != "new" {
		t.Fatalf("after ALTER and UPDATE: got %q, %v", v, err)
	}
	// A failing statement (constraint) leaves the cached statement usable.
	const ins = `INSERT INTO kv (k, v) VALUES (?, ?)`
	if _, err := db.Exec(ins, 2, "dup"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if _, err := db.Exec(ins, 9, "nine"); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(q, 9).Scan(&v); err != nil || v != "nine" {
		t.Fatalf("got %q, %v", v, err)
	}
}

// Many goroutines on a pool of cached connections (run with -race).
func TestStmtCacheConcurrent(t *testing.T) {
	st := openCacheTest(t)
	db := st.DB()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				k := 1 + (g+i)%5
				var v string
				if err := db.QueryRow(`SELECT v FROM kv WHERE k = ?`, k).Scan(&v); err != nil {
					errs <- err
					return
				}
				if v != fmt.Sprint("v", k) && v != "w" {
					errs <- fmt.Errorf("k=%d: got %q", k, v)
					return
				}
				if i%10 == 0 {
					if _, err := db.Exec(`INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING`, 100+g*100+i, "w"); err != nil {
						errs <- err
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM kv WHERE v = 'w'`).Scan(&n); err != nil || n != 16*5 {
		t.Fatalf("rows written: %d, %v; want %d", n, err, 16*5)
	}
}

// BenchmarkPointQuery compares a point SELECT through the store's cached
// driver and pool with the plain driver and database/sql's default pool,
// from many goroutines (as SMTP sessions call it).
func BenchmarkPointQuery(b *testing.B) {
	for _, mode := range []string{"plain", "cached"} {
		b.Run(mode, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "moat.db")
			dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)"
			var db *sql.DB
			var err error
			if mode == "plain" {
				db, err = sql.Open("sqlite", dsn)
			} else {
				db, err = openCachedSQLite(dsn)
			}
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec(`CREATE TABLE t (scope TEXT, k INTEGER, ham INTEGER, spam INTEGER, PRIMARY KEY (scope, k))`); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 100; i++ {
				db.Exec(`INSERT INTO t VALUES ('global', ?, ?, ?)`, i, i, i)
			}
			b.SetParallelism(10) // 10 x GOMAXPROCS goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				i := 0
				for pb.Next() {
					var h, s int
					if err := db.QueryRowContext(ctx, `SELECT ham, spam FROM t WHERE scope = ? AND k = ?`, "global", i%100).Scan(&h, &s); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}
