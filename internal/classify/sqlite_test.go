package classify

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"moat.dev/moat/internal/message"
)

func openTestDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestSQLGetPadding: lookups of every batch size (padded IN lists,
// duplicates, several chunks) return what the memory store returns, by
// Get and by ReadModel, cached or not.
func TestSQLGetPadding(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, filepath.Join(t.TempDir(), "m.db"))
	mem, sq, raw := NewMemStore(), NewSQLStore(db), NewSQLStoreWith(db, SQLStoreOptions{CacheKeys: -1})
	rng := rand.New(rand.NewPCG(1, 2))
	var d []Delta
	for i := 0; i < 3000; i++ {
		d = append(d, Delta{Key: uint64(rng.IntN(6000)), Ham: int64(rng.IntN(3)), Spam: 1, W: rng.NormFloat64(), G: rng.Float64()})
	}
	d = mergeDeltas(d)
	for _, st := range []TokenStore{mem, sq} {
		if err := st.Update(ctx, "logreg:global", Batch{Deltas: append([]Delta(nil), d...), Totals: Totals{Ham: 3, Spam: 4, Bias: 0.5}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 1, 15, 16, 17, 64, 65, 255, 256, 1023, 1024, 1025, 2500, 5000} {
		keys := make([]uint64, n)
		for i := range keys {
			keys[i] = uint64(rng.IntN(8000)) // some absent, some repeated
		}
		want, _ := mem.Get(ctx, "logreg:global", keys)
		for name, st := range map[string]*SQLStore{"cached": sq, "uncached": raw} {
			got, err := st.Get(ctx, "logreg:global", keys)
			if err != nil {
				t.Fatal(err)
			}
			for pass := 0; pass < 2; pass++ { // the second pass reads the cache
				i, tot, rows, err := st.ReadModel(ctx, []string{"logreg:user:x", "logreg:global"}, func(int, Totals) bool { return false }, keys)
				if err != nil {
					t.Fatal(err)
				}
				if i != 1 || tot != (Totals{Ham: 3, Spam: 4, Bias: 0.5}) {
					t.Fatalf("%s n=%d: scope %d totals %+v", name, n, i, tot)
				}
				for j := range keys {
					if got[j] != want[j] || rows[j] != want[j] {
						t.Fatalf("%s n=%d key %d: Get %+v ReadModel %+v want %+v", name, n, keys[j], got[j], rows[j], want[j])
					}
				}
			}
		}
	}
	if h, m := sq.CacheStats(); h == 0 || m == 0 {
		t.Fatalf("cache hits %d misses %d", h, m)
	}
}

// TestSQLCacheSeesOtherProcess: lessons learned through another
// connection pool (moat learn, another process) are used by the next
// classification of a store whose cache holds the old weights; a writer
// that does not bump the version is seen once the TTL passes.
func TestSQLCacheSeesOtherProcess(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	reader := NewSQLStore(openTestDB(t, path))
	writerDB := openTestDB(t, path)
	writer := NewSQLStore(writerDB)
	cr, _ := New(DefaultConfig(), reader)
	cw, _ := New(DefaultConfig(), writer)
	for i := 0; i < 4; i++ {
		cw.Learn(ctx, "", msg(fmt.Sprintf("meeting %d", i), fmt.Sprintf("the project meeting notes %d attached", i)), Ham)
		cw.Learn(ctx, "", msg(fmt.Sprintf("offer %d", i), fmt.Sprintf("cheap pills offer number %d click", i)), Spam)
	}
	probe := msg("weekly offer", "cheap pills for the project meeting")
	fresh := func() float64 { // an uncached store over the writer's pool
		c, _ := New(DefaultConfig(), NewSQLStoreWith(writerDB, SQLStoreOptions{CacheKeys: -1}))
		r, err := c.Classify(ctx, "", probe, false)
		if err != nil {
			t.Fatal(err)
		}
		return r.Prob
	}
	r1, _ := cr.Classify(ctx, "", probe, false)
	if r1.Prob != fresh() {
		t.Fatalf("cached %v fresh %v", r1.Prob, fresh())
	}
	if h, _ := reader.CacheStats(); h != 0 {
		t.Fatalf("first classification hit the cache %d times", h)
	}
	r2, _ := cr.Classify(ctx, "", probe, false)
	if h, _ := reader.CacheStats(); h == 0 || r2.Prob != r1.Prob {
		t.Fatalf("second classification: hits %d prob %v want %v", h, r2.Prob, r1.Prob)
	}
	for i := 0; i < 3; i++ {
		if _, err := cw.Learn(ctx, "", msg(fmt.Sprintf("pills %d", i), fmt.Sprintf("cheap pills project meeting %d", i)), Spam); err != nil {
			t.Fatal(err)
		}
	}
	r3, _ := cr.Classify(ctx, "", probe, false)
	if r3.Prob == r1.Prob || r3.Prob != fresh() {
		t.Fatalf("after learning elsewhere: cached %v fresh %v before %v", r3.Prob, fresh(), r1.Prob)
	}

	// A writer that does not bump the version: seen after the TTL.
	short := NewSQLStoreWith(openTestDB(t, path), SQLStoreOptions{CacheTTL: time.Millisecond})
	cs, _ := New(DefaultConfig(), short)
	cr.Classify(ctx, "", probe, false)
	cs.Classify(ctx, "", probe, false)
	if _, err := writerDB.Exec(`UPDATE classify_tokens SET w = w + 1 WHERE scope = 'logreg:global'`); err != nil {
		t.Fatal(err)
	}
	want := fresh()
	if r, _ := cr.Classify(ctx, "", probe, false); r.Prob != r3.Prob {
		t.Fatalf("within the TTL: %v, want the cached %v", r.Prob, r3.Prob)
	}
	time.Sleep(5 * time.Millisecond)
	if r, _ := cs.Classify(ctx, "", probe, false); r.Prob != want {
		t.Fatalf("after the TTL: %v want %v", r.Prob, want)
	}
}

// TestSQLConcurrentBounded: many concurrent classifications while the
// model learns stay consistent with the database at the end, and never
// hold more connections than MaxConcurrency (the pool could open more);
// a pool of one connection does not deadlock.
func TestSQLConcurrentBounded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openTestDB(t, filepath.Join(dir, "m.db"))
	db.SetMaxIdleConns(100) // keep every connection opened, to count them
	st := NewSQLStoreWith(db, SQLStoreOptions{MaxConcurrency: 3})
	c, _ := New(DefaultConfig(), st)
	msgs := make([]*message.Message, 20)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprintf("subject %d", i), fmt.Sprintf("body words %d for number %d and more %d", i, i*7, i%3))
		c.Learn(ctx, "", msgs[i], Label(1+i%2))
	}
	var wg sync.WaitGroup
	for g := 0; g < 30; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if _, err := c.Classify(ctx, "u@example.com", msgs[(g+i)%len(msgs)], false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		if _, err := c.Learn(ctx, "", msg(fmt.Sprintf("late %d", i), "body words late lesson"), Spam); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := db.Stats().OpenConnections; n > 3+1 { // +1: the learner's transaction
		t.Fatalf("%d connections open, want <= 4", n)
	}
	raw, _ := New(DefaultConfig(), NewSQLStoreWith(db, SQLStoreOptions{CacheKeys: -1}))
	for _, m := range msgs {
		a, _ := c.Classify(ctx, "", m, false)
		b, _ := raw.Classify(ctx, "", m, false)
		if a.Prob != b.Prob {
			t.Fatalf("cached %v uncached %v", a.Prob, b.Prob)
		}
	}

	one := openTestDB(t, filepath.Join(dir, "one.db"))
	one.SetMaxOpenConns(1)
	c1, _ := New(DefaultConfig(), NewSQLStore(one))
	done := make(chan error, 1)
	go func() {
		_, err := c1.Learn(ctx, "", msgs[0], Spam)
		if err == nil {
			_, err = c1.Classify(ctx, "", msgs[0], false)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("deadlock with a one-connection pool")
	}
}
