package classify

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"moat.dev/moat/internal/message"
)

func openTestDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	if err := MigrateDriver(context.Background(), db, "sqlite"); err != nil { // idempotent
		t.Fatal(err)
	}
	return db
}

// testBackend is a database the SQL store's tests run on.
type testBackend struct {
	name, driver string
	// pools returns a function opening pools on one fresh, migrated
	// database: each call another pool, as another process would.
	pools func(t testing.TB) func() *sql.DB
}

// testBackends are SQLite (a file) and PostgreSQL (a fresh database on
// MOAT_TEST_POSTGRES's server: sqlstore_postgres_test.go).
var testBackends = []testBackend{
	{"sqlite", "sqlite", func(t testing.TB) func() *sql.DB {
		path := filepath.Join(t.TempDir(), "m.db")
		return func() *sql.DB { return openTestDB(t, path) }
	}},
	{"postgres", "postgres", postgresPools},
}

// forEachBackend runs f as a subtest on every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b testBackend)) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

func (b testBackend) store(db *sql.DB, opt SQLStoreOptions) *SQLStore {
	opt.Driver = b.driver
	return NewSQLStoreWith(db, opt)
}

// TestSQLGetPadding: lookups of every batch size (padded IN lists,
// duplicates, several chunks) return what the memory store returns, by
// Get and by ReadModel, cached or not.
func TestSQLGetPadding(t *testing.T) { forEachBackend(t, testSQLGetPadding) }

func testSQLGetPadding(t *testing.T, b testBackend) {
	ctx := context.Background()
	db := b.pools(t)()
	mem, sq, raw := NewMemStore(), b.store(db, SQLStoreOptions{}), b.store(db, SQLStoreOptions{CacheKeys: -1})
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
func TestSQLCacheSeesOtherProcess(t *testing.T) { forEachBackend(t, testSQLCacheSeesOtherProcess) }

func testSQLCacheSeesOtherProcess(t *testing.T, b testBackend) {
	ctx := context.Background()
	pool := b.pools(t)
	reader := b.store(pool(), SQLStoreOptions{})
	writerDB := pool()
	writer := b.store(writerDB, SQLStoreOptions{})
	cr, _ := New(DefaultConfig(), reader)
	cw, _ := New(DefaultConfig(), writer)
	for i := 0; i < 4; i++ {
		cw.Learn(ctx, "", msg(fmt.Sprintf("meeting %d", i), fmt.Sprintf("the project meeting notes %d attached", i)), Ham)
		cw.Learn(ctx, "", msg(fmt.Sprintf("offer %d", i), fmt.Sprintf("cheap pills offer number %d click", i)), Spam)
	}
	probe := msg("weekly offer", "cheap pills for the project meeting")
	fresh := func() float64 { // an uncached store over the writer's pool
		c, _ := New(DefaultConfig(), b.store(writerDB, SQLStoreOptions{CacheKeys: -1}))
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
	short := b.store(pool(), SQLStoreOptions{CacheTTL: time.Millisecond})
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
func TestSQLConcurrentBounded(t *testing.T) { forEachBackend(t, testSQLConcurrentBounded) }

func testSQLConcurrentBounded(t *testing.T, b testBackend) {
	ctx := context.Background()
	db := b.pools(t)()
	db.SetMaxIdleConns(100) // keep every connection opened, to count them
	st := b.store(db, SQLStoreOptions{MaxConcurrency: 3})
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
	raw, _ := New(DefaultConfig(), b.store(db, SQLStoreOptions{CacheKeys: -1}))
	for _, m := range msgs {
		a, _ := c.Classify(ctx, "", m, false)
		b, _ := raw.Classify(ctx, "", m, false)
		if a.Prob != b.Prob {
			t.Fatalf("cached %v uncached %v", a.Prob, b.Prob)
		}
	}

	one := b.pools(t)()
	one.SetMaxOpenConns(1)
	c1, _ := New(DefaultConfig(), b.store(one, SQLStoreOptions{}))
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

// synthMail returns n labelled messages made from overlapping word lists
// (deterministic), spam and ham alternating.
func synthMail(n int, seed uint64) ([]*message.Message, []Label) {
	rng := rand.New(rand.NewPCG(seed, 7))
	spamWords := strings.Fields("cheap pills offer click winner prize casino viagra free money unsubscribe now limited deal")
	hamWords := strings.Fields("meeting project notes attached lunch report review schedule budget team thanks agenda draft")
	common := strings.Fields("the a for and of to you your this our with from today")
	var ms []*message.Message
	var ls []Label
	for i := range n {
		words, l := hamWords, Ham
		if i%2 == 1 {
			words, l = spamWords, Spam
		}
		var body []string
		for range 8 + rng.IntN(20) {
			switch rng.IntN(5) {
			case 0:
				body = append(body, common[rng.IntN(len(common))])
			case 1: // some words of the other class: the model has to weigh
				other := spamWords
				if l == Spam {
					other = hamWords
				}
				body = append(body, other[rng.IntN(len(other))])
			default:
				body = append(body, words[rng.IntN(len(words))])
			}
		}
		body = append(body, fmt.Sprintf("ref%d", i)) // every message distinct
		ms = append(ms, msg(fmt.Sprintf("%s %d", words[rng.IntN(len(words))], i), strings.Join(body, " ")))
		ls = append(ls, l)
	}
	return ms, ls
}

// sameModel fails unless the SQL store holds exactly the memory store's
// rows, totals and sizes in scope (floats bit for bit).
func sameModel(t *testing.T, mem *MemStore, sq *SQLStore, scope string) {
	t.Helper()
	ctx := context.Background()
	sc := mem.scopes[scope]
	if sc == nil {
		t.Fatalf("memory store has no scope %s", scope)
	}
	keys := make([]uint64, 0, len(sc.rows))
	for k := range sc.rows {
		keys = append(keys, k)
	}
	rows, err := sq.Get(ctx, scope, keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if rows[i] != sc.rows[k] {
			t.Fatalf("%s key %d: sql %+v mem %+v", scope, k, rows[i], sc.rows[k])
		}
	}
	if n, err := sq.Size(ctx, scope); err != nil || n != int64(len(sc.rows)) {
		t.Fatalf("%s size %d (%v), mem %d", scope, n, err, len(sc.rows))
	}
	if tot, err := sq.Totals(ctx, scope); err != nil || tot != sc.totals {
		t.Fatalf("%s totals %+v (%v), mem %+v", scope, tot, err, sc.totals)
	}
}

// TestSQLStoresAgree: trained with the same lessons (site and user
// scopes, every algorithm, including moved lessons), the SQL store holds
// the memory store's model exactly and the two score every message the
// same.
func TestSQLStoresAgree(t *testing.T) { forEachBackend(t, testSQLStoresAgree) }

func testSQLStoresAgree(t *testing.T, b testBackend) {
	ctx := context.Background()
	ms, ls := synthMail(80, 1)
	for _, alg := range []string{"logreg", "chi2", "stack"} {
		t.Run(alg, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Algorithm = alg
			cfg.MinHam, cfg.MinSpam = 5, 5
			mem, sq := NewMemStore(), b.store(b.pools(t)(), SQLStoreOptions{})
			cm, _ := New(cfg, mem)
			cs, err := New(cfg, sq)
			if err != nil {
				t.Fatal(err)
			}
			learn := func(user string, m *message.Message, l Label) {
				om, err1 := cm.Learn(ctx, user, m, l)
				os, err2 := cs.Learn(ctx, user, m, l)
				if err1 != nil || err2 != nil || om != os {
					t.Fatalf("learn: mem %v %v, sql %v %v", om, err1, os, err2)
				}
			}
			for i, m := range ms[:60] {
				learn("", m, ls[i])
				if i%3 == 0 {
					learn("carol@example.com", m, ls[i])
				}
			}
			for i, m := range ms[:6] { // corrections: lessons moved
				learn("", m, 3-ls[i])
			}
			if len(mem.scopes) < 2 {
				t.Fatalf("scopes %v", mem.scopes)
			}
			for scope := range mem.scopes { // every model the algorithm keeps
				sameModel(t, mem, sq, scope)
			}
			for _, user := range []string{"", "carol@example.com", "nobody@example.com"} {
				for pass := 0; pass < 2; pass++ { // the second pass reads the cache
					for _, m := range ms[60:] {
						rm, _ := cm.Classify(ctx, user, m, false)
						rs, err := cs.Classify(ctx, user, m, false)
						if err != nil {
							t.Fatal(err)
						}
						if !rs.Trained || rs.Prob != rm.Prob || rs.Scope != rm.Scope {
							t.Fatalf("user %q: sql %+v mem %+v", user, rs, rm)
						}
					}
				}
			}
		})
	}
}

// TestSQLLessons: a message is learned once per label (dedup by
// fingerprint), learning it with the other label moves it, and a batch
// with an Unknown lesson forgets it; rows that drop to nothing are
// deleted.
func TestSQLLessons(t *testing.T) { forEachBackend(t, testSQLLessons) }

func testSQLLessons(t *testing.T, b testBackend) {
	ctx := context.Background()
	st := b.store(b.pools(t)(), SQLStoreOptions{})
	cfg := DefaultConfig()
	cfg.Algorithm = "chi2"
	c, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	m := msg("cheap pills", "buy cheap pills now from our pharmacy")
	for i, want := range []LearnOutcome{Learned, AlreadyKnown} {
		if out, err := c.Learn(ctx, "dave@example.com", m, Spam); err != nil || out != want {
			t.Fatalf("learn %d: %v %v, want %v", i, out, err, want)
		}
	}
	scope := c.Scope("dave@example.com")
	size, _ := st.Size(ctx, scope)
	if l, err := st.Lesson(ctx, scope, m.Fingerprint); err != nil || l != Spam || size == 0 {
		t.Fatalf("lesson %v %v, size %d", l, err, size)
	}
	if out, err := c.Learn(ctx, "dave@example.com", m, Ham); err != nil || out != Moved {
		t.Fatalf("relearn: %v %v", out, err)
	}
	if tot, _ := st.Totals(ctx, scope); tot.Ham != 1 || tot.Spam != 0 {
		t.Fatalf("totals after move %+v", tot)
	}
	if n, _ := st.Size(ctx, scope); n != size {
		t.Fatalf("size %d after move, want %d", n, size)
	}
	if l, _ := st.Lesson(ctx, scope, m.Fingerprint); l != Ham {
		t.Fatalf("lesson after move %v", l)
	}
	if l, _ := st.Lesson(ctx, c.Scope(""), m.Fingerprint); l != Unknown {
		t.Fatalf("lesson leaked into the site scope: %v", l)
	}
	// Unlearn by hand: every row back to zero (deleted), lesson forgotten.
	keys := c.keys(c.Features(m, false))
	rows, _ := st.Get(ctx, scope, keys)
	var d []Delta
	seen := map[uint64]bool{}
	for i, k := range keys {
		if !seen[k] {
			seen[k] = true
			d = append(d, Delta{Key: k, Ham: -rows[i].Ham, Spam: -rows[i].Spam})
		}
	}
	if err := st.Update(ctx, scope, Batch{Deltas: d, Totals: Totals{Ham: -1}, Lesson: &Lesson{FP: m.Fingerprint, Label: Unknown}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.Size(ctx, scope); n != 0 {
		t.Fatalf("size %d after unlearning", n)
	}
	if l, _ := st.Lesson(ctx, scope, m.Fingerprint); l != Unknown {
		t.Fatalf("lesson after forgetting %v", l)
	}
	if out, err := c.Learn(ctx, "dave@example.com", m, Spam); err != nil || out != Learned {
		t.Fatalf("learn after forgetting: %v %v", out, err)
	}
}

// TestSQLDuplicateKeys: a batch naming a key several times (the classifier
// merges them, other callers may not) adds them all up, within one
// multi-row upsert and across chunks.
func TestSQLDuplicateKeys(t *testing.T) { forEachBackend(t, testSQLDuplicateKeys) }

func testSQLDuplicateKeys(t *testing.T, b testBackend) {
	ctx := context.Background()
	mem, sq := NewMemStore(), b.store(b.pools(t)(), SQLStoreOptions{})
	var d []Delta
	for i := range 700 { // keys 0..99 seven times each, shuffled by i*37
		d = append(d, Delta{Key: uint64(i*37%700) % 100, Ham: 1, Spam: int64(i % 2), W: 0.25, G: 0.5})
	}
	d = append(d, Delta{Key: 5, Ham: -3}, Delta{Key: 1 << 63, Spam: 1, W: -1}) // a negative count, a key above int64
	for _, st := range []TokenStore{mem, sq} {
		if err := st.Update(ctx, "s:global", Batch{Deltas: slices.Clone(d), Totals: Totals{Ham: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	sameModel(t, mem, sq, "s:global")
	if r, _ := sq.Get(ctx, "s:global", []uint64{5, 1 << 63}); r[0].Ham != 4 || r[1] != (Row{Spam: 1, W: -1}) {
		t.Fatalf("rows %+v", r)
	}
}

// TestSQLConcurrentLearning: many goroutines learning different messages
// into the site and user scopes at once (as quarantine releases on several
// nodes would), while others classify, lose no update: the count model
// ends equal to the memory store's trained one after the other, and the
// logistic one has every lesson.
func TestSQLConcurrentLearning(t *testing.T) { forEachBackend(t, testSQLConcurrentLearning) }

func testSQLConcurrentLearning(t *testing.T, b testBackend) {
	ctx := context.Background()
	pool := b.pools(t)
	ms, ls := synthMail(48, 2)
	for _, alg := range []string{"chi2", "logreg"} {
		t.Run(alg, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Algorithm = alg
			cfg.MinHam, cfg.MinSpam = 1, 1
			mem := NewMemStore()
			cm, _ := New(cfg, mem)
			// Two stores over two pools: two gateway processes.
			var cs []*Classifier
			var sts []*SQLStore
			for range 2 {
				st := b.store(pool(), SQLStoreOptions{})
				c, err := New(cfg, st)
				if err != nil {
					t.Fatal(err)
				}
				cs, sts = append(cs, c), append(sts, st)
			}
			users := []string{"", "erin@example.com"}
			for i, m := range ms {
				for _, u := range users {
					if _, err := cm.Learn(ctx, u, m, ls[i]); err != nil {
						t.Fatal(err)
					}
				}
			}
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(2)
				go func() { // learners
					defer wg.Done()
					for i := w; i < len(ms); i += 8 {
						for _, u := range users {
							if out, err := cs[w%2].Learn(ctx, u, ms[i], ls[i]); err != nil || out != Learned {
								t.Errorf("learn %d for %q: %v %v", i, u, out, err)
								return
							}
						}
					}
				}()
				go func() { // readers
					defer wg.Done()
					for i := range 10 {
						if _, err := cs[(w+1)%2].Classify(ctx, users[i%2], ms[(w*10+i)%len(ms)], false); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			for _, u := range users {
				scope := cs[0].Scope(u)
				tot, err := sts[0].Totals(ctx, scope)
				if err != nil || tot.Ham+tot.Spam != int64(len(ms)) {
					t.Fatalf("%s totals %+v %v, want %d lessons", scope, tot, err, len(ms))
				}
				if alg == "chi2" { // counts do not depend on the order
					sameModel(t, mem, sts[1], scope)
				}
				for i, m := range ms {
					if l, _ := sts[1].Lesson(ctx, scope, m.Fingerprint); l != ls[i] {
						t.Fatalf("%s lesson %d: %v want %v", scope, i, l, ls[i])
					}
				}
			}
			// Both processes' caches follow the other's writes.
			for _, m := range ms[:10] {
				r0, _ := cs[0].Classify(ctx, "", m, false)
				r1, _ := cs[1].Classify(ctx, "", m, false)
				if r0.Prob != r1.Prob {
					t.Fatalf("processes disagree: %v %v", r0.Prob, r1.Prob)
				}
			}
		})
	}
}

// TestUpsertChunks: upsertChunks writes every row once, in order, in
// statements of 512 rows while they last and then of 64, 8 and 1, the
// scope first in each.
func TestUpsertChunks(t *testing.T) {
	stmts := [len(upsertSizes)]string{"s512", "s64", "s8", "s1"}
	for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 65, 511, 512, 513, 1100, 1024 + 64 + 8 + 1} {
		var rows []Delta
		for i := range n {
			rows = append(rows, Delta{Key: uint64(i), Ham: int64(i % 3), Spam: int64(i % 2), W: float64(i) / 7, G: float64(i) / 9})
		}
		var got []Delta
		var stmtsUsed []string
		exec := func(q string, args ...any) error {
			if args[0] != "sc" || (len(args)-1)%5 != 0 {
				return fmt.Errorf("%s: args %v", q, args[:min(len(args), 6)])
			}
			size := map[string]int{"s512": 512, "s64": 64, "s8": 8, "s1": 1}[q]
			if (len(args)-1)/5 != size {
				return fmt.Errorf("%s with %d rows", q, (len(args)-1)/5)
			}
			for a := args[1:]; len(a) > 0; a = a[5:] {
				got = append(got, Delta{Key: uint64(a[0].(int64)), Ham: a[1].(int64), Spam: a[2].(int64), W: a[3].(float64), G: a[4].(float64)})
			}
			stmtsUsed = append(stmtsUsed, q)
			return nil
		}
		if err := upsertChunks(exec, &stmts, "sc", slices.Values(rows)); err != nil {
			t.Fatalf("%d rows: %v", n, err)
		}
		if !slices.Equal(got, rows) {
			t.Fatalf("%d rows: wrote %d, not the rows given in order", n, len(got))
		}
		// Largest first: the statements' sizes never grow.
		for i := 1; i < len(stmtsUsed); i++ {
			if slices.Index(stmts[:], stmtsUsed[i]) < slices.Index(stmts[:], stmtsUsed[i-1]) {
				t.Fatalf("%d rows: statements %v", n, stmtsUsed)
			}
		}
		if want := n/512 + n%512/64 + n%64/8 + n%8; len(stmtsUsed) != want {
			t.Fatalf("%d rows: %d statements %v, want %d", n, len(stmtsUsed), stmtsUsed, want)
		}
	}
}
