package classify

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"iter"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"moat.dev/moat/internal/store/sqlstore"
)

// Schema is the classifier's tables in SQLite. classify_versions counts
// each scope's updates (the model version that SQLStore's cache is
// checked against). Keys are the 63/64-bit feature keys stored as signed
// INTEGER (bit pattern preserved).
const Schema = `
CREATE TABLE IF NOT EXISTS classify_tokens (
	scope TEXT NOT NULL,
	key   INTEGER NOT NULL,
	ham   INTEGER NOT NULL DEFAULT 0,
	spam  INTEGER NOT NULL DEFAULT 0,
	w     REAL NOT NULL DEFAULT 0,
	g     REAL NOT NULL DEFAULT 0,
	PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS classify_totals (
	scope TEXT PRIMARY KEY,
	ham   INTEGER NOT NULL DEFAULT 0,
	spam  INTEGER NOT NULL DEFAULT 0,
	bias  REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS classify_lessons (
	scope      TEXT NOT NULL,
	fp         BLOB NOT NULL,
	label      INTEGER NOT NULL,
	learned_at INTEGER NOT NULL,
	PRIMARY KEY (scope, fp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS classify_versions (
	scope   TEXT PRIMARY KEY,
	version INTEGER NOT NULL DEFAULT 0
);
`

// PostgresSchema is Schema for PostgreSQL: the same tables and columns,
// with 64-bit integer and float types (SQLite's INTEGER and REAL are 64
// bits already).
const PostgresSchema = `
CREATE TABLE IF NOT EXISTS classify_tokens (
	scope TEXT NOT NULL,
	key   BIGINT NOT NULL,
	ham   BIGINT NOT NULL DEFAULT 0,
	spam  BIGINT NOT NULL DEFAULT 0,
	w     DOUBLE PRECISION NOT NULL DEFAULT 0,
	g     DOUBLE PRECISION NOT NULL DEFAULT 0,
	PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS classify_totals (
	scope TEXT PRIMARY KEY,
	ham   BIGINT NOT NULL DEFAULT 0,
	spam  BIGINT NOT NULL DEFAULT 0,
	bias  DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS classify_lessons (
	scope      TEXT NOT NULL,
	fp         BYTEA NOT NULL,
	label      INTEGER NOT NULL,
	learned_at BIGINT NOT NULL,
	PRIMARY KEY (scope, fp)
);
CREATE TABLE IF NOT EXISTS classify_versions (
	scope   TEXT PRIMARY KEY,
	version BIGINT NOT NULL DEFAULT 0
);
`

// migrateLockID is the PostgreSQL advisory lock that serializes Migrate
// between gateway nodes starting together (concurrent CREATE TABLE IF NOT
// EXISTS of one table can fail on PostgreSQL).
const migrateLockID = 0x6d6f6174636c73 // "moatcls"

// Migrate creates the classifier's tables in a SQLite database if they do
// not exist: MigrateDriver(ctx, db, "sqlite").
func Migrate(ctx context.Context, db *sql.DB) error { return MigrateDriver(ctx, db, "sqlite") }

// MigrateDriver creates the classifier's tables if they do not exist, in a
// database of driver ("sqlite" or "", or "postgres": the store's Driver()).
// On PostgreSQL it runs in one transaction under an advisory lock, so
// nodes sharing the database may start at the same time.
func MigrateDriver(ctx context.Context, db *sql.DB, driver string) error {
	switch driver {
	case "", "sqlite":
		for _, stmt := range strings.Split(Schema, ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := db.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("classify: migrate: %w", err)
			}
		}
		return nil
	case "postgres":
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("classify: migrate: %w", err)
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLockID)); err != nil {
			return fmt.Errorf("classify: migrate: %w", err)
		}
		for _, stmt := range strings.Split(PostgresSchema, ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("classify: migrate: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("classify: migrate: %w", err)
		}
		return nil
	}
	return fmt.Errorf("classify: migrate: unknown driver %q (want sqlite or postgres)", driver)
}

// OpenSQLite opens (creating) a SQLite database file in WAL mode, for
// standalone use (moat learn/classify without a configured store). Its
// page cache may grow to 64 MiB (SQLite's default is 2 MiB): a bulk
// lesson of a whole corpus rewrites most of the model's pages in one
// transaction, and with the small cache SQLite spills them to the WAL
// and reads them back midway (38,000 page writes for a 21 MB model
// instead of 15,000).
func OpenSQLite(path string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_pragma=cache_size(-65536)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// SQLStore is a TokenStore in SQLite or PostgreSQL (the store's database,
// SQLStoreOptions.Driver; both run the same SQL, rebound by
// sqlstore.Rebind).
//
// Classification at end of DATA is its hot path, and it is built for it:
//
//   - Statements are prepared once and kept for the life of the store
//     (database/sql keeps one prepared copy per pool connection that ran
//     it). Key lookups use IN lists padded (with a repeated key) to a few
//     fixed lengths, so four statements serve every message.
//   - Its queries are bounded (SQLStoreOptions.MaxConcurrency): a burst of
//     sessions waits here instead of making the shared pool open (and,
//     beyond its idle limit, close again) connections. The pool's settings
//     are not touched.
//   - Rows of the global scopes (names ending ":global") go through a
//     bounded in-memory read-through cache that is valid for one model
//     version. Every Update bumps the scope's version in classify_versions
//     in the same transaction, and a classification reads the version
//     together with the totals (ReadModel, one query), so a lesson learned
//     by any process (moat learn, a quarantine release) is used by the next
//     classification. Entries also expire after SQLStoreOptions.CacheTTL,
//     which bounds staleness for writers that do not bump the version
//     (older builds, hand edits).
//
// Get, used for learning, always reads the database.
type SQLStore struct {
	db  *sql.DB
	opt SQLStoreOptions
	q   *dialectSQL
	sem chan struct{}

	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	caches map[string]*rowCache

	hits, misses atomic.Int64 // cache lookups of keys
}

// CacheStats returns how many key lookups of ReadModel the cache answered
// and how many went to the database, since the store was made.
func (s *SQLStore) CacheStats() (hits, misses int64) { return s.hits.Load(), s.misses.Load() }

// SQLStoreOptions tunes an SQLStore; the zero value means the defaults.
type SQLStoreOptions struct {
	// CacheKeys bounds the rows cached per global scope (default 1<<18,
	// about 15 MB when full); negative disables the cache.
	CacheKeys int
	// CacheTTL is the longest a cached row is used without being read
	// again from the database, whatever the model version says (default
	// 10 minutes).
	CacheTTL time.Duration
	// MaxConcurrency bounds the store's concurrent read queries (default
	// max(4, 2*GOMAXPROCS)): SQLite reads are CPU-bound, so more gain
	// nothing but connections.
	MaxConcurrency int
	// Driver is the database's SQL dialect: "sqlite" (or "") or
	// "postgres", as the store's Driver() says. Any other value is taken
	// as sqlite; MigrateDriver refuses it.
	Driver string
}

// NewSQLStore returns a store over a SQLite db with the default options;
// call Migrate first.
func NewSQLStore(db *sql.DB) *SQLStore { return NewSQLStoreWith(db, SQLStoreOptions{}) }

// NewSQLStoreWith returns a store over db; call MigrateDriver with
// opt.Driver first.
func NewSQLStoreWith(db *sql.DB, opt SQLStoreOptions) *SQLStore {
	if opt.CacheKeys == 0 {
		opt.CacheKeys = 1 << 18
	}
	if opt.CacheTTL <= 0 {
		opt.CacheTTL = 10 * time.Minute
	}
	if opt.MaxConcurrency <= 0 {
		opt.MaxConcurrency = max(4, 2*runtime.GOMAXPROCS(0))
	}
	q := &sqliteSQL
	if opt.Driver == "postgres" {
		q = &postgresSQL
	}
	return &SQLStore{db: db, opt: opt, q: q, sem: make(chan struct{}, opt.MaxConcurrency),
		stmts: map[string]*sql.Stmt{}, caches: map[string]*rowCache{}}
}

// Close releases the prepared statements (closing the DB does too).
func (s *SQLStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, st := range s.stmts {
		st.Close()
		delete(s.stmts, q)
	}
	return nil
}

// stmt returns the prepared statement for q, preparing it on first use
// (which takes a pool connection): call it holding the semaphore, and
// never with a transaction open (the pool may have only one connection).
func (s *SQLStore) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	s.mu.Lock()
	st := s.stmts[q]
	s.mu.Unlock()
	if st != nil {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.stmts[q]; old != nil {
		st.Close()
		return old, nil
	}
	s.stmts[q] = st
	return st, nil
}

func (s *SQLStore) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *SQLStore) release() { <-s.sem }

// getSizes are the IN-list lengths of the key lookups; a shorter list is
// padded with its last key.
var getSizes = [...]int{16, 64, 256, 1024}

// upsertSizes are the row counts of the multi-row upserts; a batch is
// written as a sum of them, largest first.
var upsertSizes = [...]int{512, 64, 8, 1}

// dialectSQL is every statement of the store, written once with ?
// placeholders and rebound for a driver. The statement texts are fixed,
// so each is prepared once per store.
type dialectSQL struct {
	// keyArray: PostgreSQL looks keys up with one array parameter
	// (selectArray, any number of keys, nothing to pad) instead of the
	// long IN lists, which it plans and binds slowly.
	keyArray    bool
	selectArray string
	selects     [len(getSizes)]string    // key lookups, by padded IN-list length
	totals      [3]string                // totals and versions, by number of scopes (1, 2)
	upserts     [len(upsertSizes)]string // multi-row upserts, by row count
	sets        [len(upsertSizes)]string // multi-row upserts that set the rows (Apply)
	shrink, addTotals, bumpVersion, forgetLesson, putLesson,
	totalsOne, lesson, size string
	// Apply's: the version bump that returns the new version, setting
	// totals, removing a key, reading a version.
	bumpReturning, setTotals, deleteKey, version string
	// probe: whether a scope has any row and any lesson (the overlay);
	// scan: all the rows of a scope.
	probe, scan string
	// upsertArray, setArray: PostgreSQL's Apply writes any number of
	// rows with one statement of five array parameters (keyArray).
	upsertArray, setArray string
}

var sqliteSQL, postgresSQL = newDialectSQL("sqlite"), newDialectSQL("postgres")

// newDialectSQL returns the statements for driver. The upserts name the
// stored row by its table (unqualified, PostgreSQL finds the column
// ambiguous with excluded's).
func newDialectSQL(driver string) dialectSQL {
	var d dialectSQL
	rb := func(q string) string { return sqlstore.Rebind(driver, q) }
	if driver == "postgres" {
		d.keyArray = true
		d.selectArray = `SELECT key, ham, spam, w, g FROM classify_tokens WHERE scope = $1 AND key = ANY($2::bigint[])`
		arrays := `INSERT INTO classify_tokens(scope, key, ham, spam, w, g)
			SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::double precision[], $6::double precision[])`
		d.setArray = arrays + " ON CONFLICT(scope, key) DO UPDATE SET ham = excluded.ham, spam = excluded.spam, w = excluded.w, g = excluded.g"
		d.upsertArray = arrays + " ON CONFLICT(scope, key) DO UPDATE SET ham = classify_tokens.ham + excluded.ham, spam = classify_tokens.spam + excluded.spam," +
			" w = classify_tokens.w + excluded.w, g = classify_tokens.g + excluded.g"
	}
	for i, n := range getSizes {
		d.selects[i] = rb("SELECT key, ham, spam, w, g FROM classify_tokens WHERE scope = ? AND key IN (?" + strings.Repeat(",?", n-1) + ")")
	}
	for n := 1; n < len(d.totals); n++ {
		d.totals[n] = rb(`SELECT t.scope, t.ham, t.spam, t.bias, COALESCE(v.version, 0) FROM classify_totals t
			LEFT JOIN classify_versions v ON v.scope = t.scope WHERE t.scope IN (?` + strings.Repeat(",?", n-1) + ")")
	}
	for i, n := range upsertSizes {
		d.upserts[i] = upsertSQL(driver, n)
		d.sets[i] = setSQL(driver, n)
	}
	d.shrink = rb(`DELETE FROM classify_tokens WHERE scope = ? AND key = ? AND ham <= 0 AND spam <= 0 AND w = 0 AND g = 0`)
	d.addTotals = rb(`INSERT INTO classify_totals(scope, ham, spam, bias) VALUES(?,?,?,?)
		ON CONFLICT(scope) DO UPDATE SET ham = classify_totals.ham + excluded.ham, spam = classify_totals.spam + excluded.spam,
		bias = classify_totals.bias + excluded.bias`)
	d.bumpVersion = rb(`INSERT INTO classify_versions(scope, version) VALUES(?, 1)
		ON CONFLICT(scope) DO UPDATE SET version = classify_versions.version + 1`)
	d.forgetLesson = rb(`DELETE FROM classify_lessons WHERE scope = ? AND fp = ?`)
	d.putLesson = rb(`INSERT INTO classify_lessons(scope, fp, label, learned_at) VALUES(?,?,?,?)
		ON CONFLICT(scope, fp) DO UPDATE SET label = excluded.label, learned_at = excluded.learned_at`)
	d.totalsOne = rb(`SELECT ham, spam, bias FROM classify_totals WHERE scope = ?`)
	d.lesson = rb(`SELECT label FROM classify_lessons WHERE scope = ? AND fp = ?`)
	d.size = rb(`SELECT count(*) FROM classify_tokens WHERE scope = ?`)
	d.bumpReturning = rb(`INSERT INTO classify_versions(scope, version) VALUES(?, 1)
		ON CONFLICT(scope) DO UPDATE SET version = classify_versions.version + 1 RETURNING version`)
	d.setTotals = rb(`INSERT INTO classify_totals(scope, ham, spam, bias) VALUES(?,?,?,?)
		ON CONFLICT(scope) DO UPDATE SET ham = excluded.ham, spam = excluded.spam, bias = excluded.bias`)
	d.deleteKey = rb(`DELETE FROM classify_tokens WHERE scope = ? AND key = ?`)
	d.version = rb(`SELECT version FROM classify_versions WHERE scope = ?`)
	d.scan = rb(`SELECT key, ham, spam, w, g FROM classify_tokens WHERE scope = ?`)
	d.probe = rb(`SELECT EXISTS(SELECT 1 FROM classify_tokens WHERE scope = ?), EXISTS(SELECT 1 FROM classify_lessons WHERE scope = ?)`)
	return d
}

// rowsValues writes the start of a multi-row insert of n rows: the scope
// is the first parameter, shared by every row (bound once, not once per
// row), then key, ham, spam, w and g of each row. PostgreSQL numbers its
// parameters ($1 is used by every row); SQLite looks numbered parameters
// up in a list, slowly when there are thousands, so there the rows are a
// VALUES table selected from, with anonymous parameters.
func rowsValues(b *strings.Builder, driver string, n int) {
	if driver == "postgres" {
		b.WriteString("INSERT INTO classify_tokens(scope, key, ham, spam, w, g) VALUES ")
		p := 2
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(b, "($1,$%d,$%d,$%d,$%d,$%d)", p, p+1, p+2, p+3, p+4)
			p += 5
		}
		return
	}
	b.WriteString("INSERT INTO classify_tokens(scope, key, ham, spam, w, g) SELECT ?, column1, column2, column3, column4, column5 FROM (VALUES ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?)")
	}
	// WHERE true: an upsert's SELECT needs a WHERE (SQLite's parser).
	b.WriteString(") WHERE true")
}

// setSQL returns the multi-row upsert statement for n rows that sets
// them to the given values.
func setSQL(driver string, n int) string {
	var b strings.Builder
	rowsValues(&b, driver, n)
	b.WriteString(" ON CONFLICT(scope, key) DO UPDATE SET ham = excluded.ham, spam = excluded.spam, w = excluded.w, g = excluded.g")
	return b.String()
}

// upsertSQL returns the multi-row upsert statement for n rows.
func upsertSQL(driver string, n int) string {
	var b strings.Builder
	rowsValues(&b, driver, n)
	b.WriteString(" ON CONFLICT(scope, key) DO UPDATE SET ham = classify_tokens.ham + excluded.ham, spam = classify_tokens.spam + excluded.spam," +
		" w = classify_tokens.w + excluded.w, g = classify_tokens.g + excluded.g")
	return b.String()
}

// readRows reads the rows of the distinct keys uniq (sorted) and calls
// found for each stored one.
func (s *SQLStore) readRows(ctx context.Context, scope string, uniq []int64, found func(k int64, r Row)) error {
	if s.q.keyArray {
		if len(uniq) == 0 {
			return nil
		}
		st, err := s.stmt(ctx, s.q.selectArray)
		if err != nil {
			return err
		}
		rows, err := st.QueryContext(ctx, scope, uniq)
		if err != nil {
			return err
		}
		return scanRows(rows, found)
	}
	args := make([]any, 0, getSizes[len(getSizes)-1]+1)
	for start := 0; start < len(uniq); {
		n := len(uniq) - start
		si := len(getSizes) - 1
		for i, size := range getSizes {
			if size >= n {
				si = i
				break
			}
		}
		size := getSizes[si]
		end := min(start+size, len(uniq))
		args = append(args[:0], scope)
		for _, k := range uniq[start:end] {
			args = append(args, k)
		}
		for len(args) < size+1 {
			args = append(args, uniq[end-1])
		}
		st, err := s.stmt(ctx, s.q.selects[si])
		if err != nil {
			return err
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		if err := scanRows(rows, found); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// scanRows calls found for each (key, ham, spam, w, g) row and closes rows.
func scanRows(rows *sql.Rows, found func(k int64, r Row)) error {
	for rows.Next() {
		var k int64
		var r Row
		if err := rows.Scan(&k, &r.Ham, &r.Spam, &r.W, &r.G); err != nil {
			rows.Close()
			return err
		}
		found(k, r)
	}
	if err := rows.Err(); err != nil { // a failure mid-way is not the end of the rows
		rows.Close()
		return err
	}
	return rows.Close()
}

// uniqKeys returns the distinct keys of keys, sorted (B-tree locality),
// and where each one occurs.
func uniqKeys(keys []uint64, at []int) ([]int64, map[int64][]int) {
	pos := make(map[int64][]int, len(keys))
	if at == nil {
		for i, k := range keys {
			pos[int64(k)] = append(pos[int64(k)], i)
		}
	} else {
		for _, i := range at {
			pos[int64(keys[i])] = append(pos[int64(keys[i])], i)
		}
	}
	uniq := make([]int64, 0, len(pos))
	for k := range pos {
		uniq = append(uniq, k)
	}
	slices.Sort(uniq)
	return uniq, pos
}

// Get implements TokenStore. It always reads the database.
func (s *SQLStore) Get(ctx context.Context, scope string, keys []uint64) ([]Row, error) {
	out := make([]Row, len(keys))
	uniq, pos := uniqKeys(keys, nil)
	if err := s.acquire(ctx); err != nil {
		return nil, err
	}
	defer s.release()
	err := s.readRows(ctx, scope, uniq, func(k int64, r Row) {
		for _, i := range pos[k] {
			out[i] = r
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ReadModel implements ModelReader: one query for the totals and model
// versions of all candidate scopes, then the chosen scope's rows, from
// the cache for a global scope.
func (s *SQLStore) ReadModel(ctx context.Context, scopes []string, usable func(i int, t Totals) bool, keys []uint64) (int, Totals, []Row, error) {
	if len(scopes) == 0 || len(scopes) >= len(s.q.totals) {
		return 0, Totals{}, nil, fmt.Errorf("classify: ReadModel: %d scopes", len(scopes))
	}
	if err := s.acquire(ctx); err != nil {
		return 0, Totals{}, nil, err
	}
	defer s.release()
	st, err := s.stmt(ctx, s.q.totals[len(scopes)])
	if err != nil {
		return 0, Totals{}, nil, err
	}
	args := make([]any, len(scopes))
	for i, sc := range scopes {
		args[i] = sc
	}
	tot := make([]Totals, len(scopes))
	ver := make([]int64, len(scopes))
	has := make([]bool, len(scopes))
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return 0, Totals{}, nil, err
	}
	for rows.Next() {
		var name string
		var t Totals
		var v int64
		if err := rows.Scan(&name, &t.Ham, &t.Spam, &t.Bias, &v); err != nil {
			rows.Close()
			return 0, Totals{}, nil, err
		}
		if i := slices.Index(scopes, name); i >= 0 {
			tot[i], ver[i], has[i] = t, v, true
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return 0, Totals{}, nil, err
	}
	if err := rows.Close(); err != nil {
		return 0, Totals{}, nil, err
	}
	pick := len(scopes) - 1
	for i := range pick {
		if usable(i, tot[i]) {
			pick = i
			break
		}
	}
	out := make([]Row, len(keys))
	if !has[pick] {
		// Update writes the totals in every transaction that writes rows:
		// a scope without totals has no rows.
		return pick, Totals{}, out, nil
	}
	scope := scopes[pick]
	c := s.cache(scope)
	if c == nil {
		uniq, pos := uniqKeys(keys, nil)
		err := s.readRows(ctx, scope, uniq, func(k int64, r Row) {
			for _, i := range pos[k] {
				out[i] = r
			}
		})
		return pick, tot[pick], out, err
	}
	gen, miss := c.lookup(ver[pick], time.Now(), s.opt.CacheTTL, keys, out)
	s.hits.Add(int64(len(keys) - len(miss)))
	s.misses.Add(int64(len(miss)))
	if len(miss) == 0 {
		return pick, tot[pick], out, nil
	}
	uniq, pos := uniqKeys(keys, miss)
	found := make(map[uint64]Row, len(uniq))
	for _, k := range uniq {
		found[uint64(k)] = Row{} // absent keys are cached too
	}
	err = s.readRows(ctx, scope, uniq, func(k int64, r Row) {
		for _, i := range pos[k] {
			out[i] = r
		}
		found[uint64(k)] = r
	})
	if err != nil {
		return 0, Totals{}, nil, err
	}
	c.add(gen, found)
	return pick, tot[pick], out, nil
}

// cache returns the row cache of scope, nil if it is not cached.
func (s *SQLStore) cache(scope string) *rowCache {
	if s.opt.CacheKeys < 0 || !strings.HasSuffix(scope, ":global") {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.caches[scope]
	if c == nil {
		c = &rowCache{max: max(s.opt.CacheKeys, 2)}
		c.resetLocked(-1, time.Time{})
		s.caches[scope] = c
	}
	return c
}

// rowCache holds rows of one scope at one model version, in two
// generations: lookups promote rows from the previous generation, and
// when the current one holds max/2 rows it becomes the previous one (the
// rows not used since are dropped). At most max rows are held.
type rowCache struct {
	mu        sync.Mutex
	max       int
	version   int64
	born      time.Time
	gen       uint64 // incremented on every reset: a reader adds only to the generation it read
	cur, prev map[uint64]Row
}

func (c *rowCache) resetLocked(version int64, now time.Time) {
	c.version, c.born = version, now
	c.gen++
	c.cur, c.prev = make(map[uint64]Row), nil
}

func (c *rowCache) putLocked(k uint64, r Row) {
	if len(c.cur) >= c.max/2 {
		c.prev, c.cur = c.cur, make(map[uint64]Row, c.max/2)
	}
	c.cur[k] = r
}

// lookup fills out with the cached rows of keys at version and returns
// the positions of the keys it does not hold. A different version, or
// cached rows older than ttl, empty the cache first.
func (c *rowCache) lookup(version int64, now time.Time, ttl time.Duration, keys []uint64, out []Row) (uint64, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.version != version || now.Sub(c.born) > ttl {
		c.resetLocked(version, now)
	}
	var miss []int
	for i, k := range keys {
		if r, ok := c.cur[k]; ok {
			out[i] = r
			continue
		}
		if r, ok := c.prev[k]; ok {
			out[i] = r
			delete(c.prev, k)
			c.putLocked(k, r)
			continue
		}
		miss = append(miss, i)
	}
	return c.gen, miss
}

// add caches rows read after lookup returned gen, unless the cache was
// reset since (a newer version, a local Update).
func (c *rowCache) add(gen uint64, rows map[uint64]Row) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	for k, r := range rows {
		c.putLocked(k, r)
	}
}

// invalidate empties the cache of scope (after a local Update; other
// processes' updates are seen through the version).
func (s *SQLStore) invalidate(scope string) {
	s.mu.Lock()
	c := s.caches[scope]
	s.mu.Unlock()
	if c != nil {
		c.mu.Lock()
		c.resetLocked(-1, time.Time{})
		c.mu.Unlock()
	}
}

// prepared returns the prepared statements of qs, keyed by their text.
// Writers call it before beginning their transaction, which takes a pool
// connection that preparing would otherwise wait for (the pool may have
// only one).
func (s *SQLStore) prepared(ctx context.Context, qs []string) (map[string]*sql.Stmt, error) {
	if err := s.acquire(ctx); err != nil {
		return nil, err
	}
	defer s.release()
	st := make(map[string]*sql.Stmt, len(qs))
	for _, q := range qs {
		p, err := s.stmt(ctx, q)
		if err != nil {
			return nil, err
		}
		st[q] = p
	}
	return st, nil
}

// Update implements TokenStore: one transaction per batch, which also
// bumps the scope's model version.
func (s *SQLStore) Update(ctx context.Context, scope string, b Batch) (err error) {
	// Prepare every statement before the transaction takes a connection
	// (the pool may have only one).
	need := []string{s.q.addTotals, s.q.bumpVersion, s.q.shrink, s.q.forgetLesson, s.q.putLesson}
	st, err := s.prepared(ctx, append(need, s.q.upserts[:]...))
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	exec := func(q string, args ...any) error {
		_, err := tx.StmtContext(ctx, st[q]).ExecContext(ctx, args...)
		return err
	}
	// The version first: every writer of a scope (Update, Apply) locks
	// its version row before any of its rows, so writers of one scope
	// queue there and cannot deadlock on PostgreSQL.
	if err = exec(s.q.bumpVersion, scope); err != nil {
		return err
	}
	// Multi-row upserts in key order, in chunks of upsertSizes.
	deltas, shrink := sortedDeltas(b.Deltas)
	if err = upsertChunks(exec, &s.q.upserts, scope, slices.Values(deltas)); err != nil {
		return err
	}
	for _, k := range shrink {
		if err = exec(s.q.shrink, scope, k); err != nil {
			return err
		}
	}
	if err = exec(s.q.addTotals, scope, b.Totals.Ham, b.Totals.Spam, b.Totals.Bias); err != nil {
		return err
	}
	if l := b.Lesson; l != nil {
		if l.Label == Unknown {
			err = exec(s.q.forgetLesson, scope, l.FP[:])
		} else {
			err = exec(s.q.putLesson, scope, l.FP[:], int(l.Label), time.Now().Unix())
		}
		if err != nil {
			return err
		}
	}
	err = tx.Commit()
	s.invalidate(scope)
	return err
}

// upsertChunks writes rows with the multi-row statements stmts, in
// chunks of the largest size first: as many full chunks as the rows
// fill, the rest in smaller ones.
func upsertChunks(exec func(q string, args ...any) error, stmts *[len(upsertSizes)]string, scope string, rows iter.Seq[Delta]) error {
	const cols = 5
	sc := any(scope) // boxed once
	args := make([]any, 1, upsertSizes[0]*cols+1)
	args[0] = sc
	var err error
	for d := range rows {
		args = append(args, int64(d.Key), d.Ham, d.Spam, d.W, d.G)
		if len(args) == cap(args) {
			if err = exec(stmts[0], args...); err != nil {
				return err
			}
			args = args[:1]
		}
	}
	rest := args[1:]
	part := make([]any, 1, upsertSizes[1]*cols+1)
	part[0] = sc
	for si := 1; si < len(upsertSizes); si++ {
		size := upsertSizes[si] * cols
		for len(rest) >= size {
			part = append(part[:1], rest[:size]...)
			if err = exec(stmts[si], part...); err != nil {
				return err
			}
			rest = rest[size:]
		}
	}
	return nil
}

// arrayChunk is the rows of one array statement (PostgreSQL's Apply).
const arrayChunk = 1 << 13

// applyRows writes rows for Apply, setting them to the values given
// (set) or adding them: with the array statements on PostgreSQL, else
// with upsertChunks.
func (s *SQLStore) applyRows(exec func(q string, args ...any) error, set bool, scope string, rows iter.Seq[Delta]) error {
	if !s.q.keyArray {
		stmts := &s.q.upserts
		if set {
			stmts = &s.q.sets
		}
		return upsertChunks(exec, stmts, scope, rows)
	}
	q := s.q.upsertArray
	if set {
		q = s.q.setArray
	}
	var keys, ham, spam []int64
	var w, g []float64
	write := func() error {
		if len(keys) == 0 {
			return nil
		}
		err := exec(q, scope, keys, ham, spam, w, g)
		keys, ham, spam, w, g = keys[:0], ham[:0], spam[:0], w[:0], g[:0]
		return err
	}
	for d := range rows {
		keys, ham, spam = append(keys, int64(d.Key)), append(ham, d.Ham), append(spam, d.Spam)
		w, g = append(w, d.W), append(g, d.G)
		if len(keys) == arrayChunk {
			if err := write(); err != nil {
				return err
			}
		}
	}
	return write()
}

// Version implements BulkStore.
func (s *SQLStore) Version(ctx context.Context, scope string) (int64, error) {
	var v int64
	err := s.queryRow(ctx, s.q.version, []any{scope}, &v)
	if err == sql.ErrNoRows {
		return 0, nil
	}
	return v, err
}

// probeScope implements scopeProber.
func (s *SQLStore) probeScope(ctx context.Context, scope string) (hasRows, hasLessons bool, err error) {
	err = s.queryRow(ctx, s.q.probe, []any{scope, scope}, &hasRows, &hasLessons)
	return hasRows, hasLessons, err
}

// scanScope implements scopeProber.
func (s *SQLStore) scanScope(ctx context.Context, scope string, fn func(k uint64, r Row)) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	st, err := s.stmt(ctx, s.q.scan)
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(ctx, scope)
	if err != nil {
		return err
	}
	return scanRows(rows, func(k int64, r Row) { fn(uint64(k), r) })
}

// Apply implements BulkStore: one transaction for all of ws.
func (s *SQLStore) Apply(ctx context.Context, ws []ScopeWrite) (err error) {
	need := []string{s.q.addTotals, s.q.setTotals, s.q.bumpReturning, s.q.shrink, s.q.deleteKey, s.q.forgetLesson, s.q.putLesson}
	if s.q.keyArray {
		need = append(need, s.q.upsertArray, s.q.setArray)
	} else {
		need = append(need, s.q.upserts[:]...)
		need = append(need, s.q.sets[:]...)
	}
	st, err := s.prepared(ctx, need)
	if err != nil {
		return err
	}
	slices.SortFunc(ws, func(a, b ScopeWrite) int { return strings.Compare(a.Scope, b.Scope) })
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
		for _, w := range ws {
			s.invalidate(w.Scope)
		}
	}()
	exec := func(q string, args ...any) error {
		_, err := tx.StmtContext(ctx, st[q]).ExecContext(ctx, args...)
		return err
	}
	now := time.Now().Unix()
	for _, w := range ws {
		var v int64
		if err = tx.StmtContext(ctx, st[s.q.bumpReturning]).QueryRowContext(ctx, w.Scope).Scan(&v); err != nil {
			return err
		}
		if v == w.Version+1 {
			// Nobody wrote the scope since the lessons read it: set the
			// rows to what the lessons computed, and remove the rows an
			// unlearning left all zero.
			var gone []int64
			err = s.applyRows(exec, true, w.Scope, func(yield func(Delta) bool) {
				for r := range w.Rows {
					if !r.Exists {
						gone = append(gone, int64(r.Key))
					} else if !yield(Delta{Key: r.Key, Ham: r.Row.Ham, Spam: r.Row.Spam, W: r.Row.W, G: r.Row.G}) {
						return
					}
				}
			})
			if err != nil {
				return err
			}
			for _, k := range gone {
				if err = exec(s.q.deleteKey, w.Scope, k); err != nil {
					return err
				}
			}
			err = exec(s.q.setTotals, w.Scope, w.Totals.Ham, w.Totals.Spam, w.Totals.Bias)
		} else {
			// Another writer came in between: add the changes.
			// Then remove the rows a subtraction may have emptied.
			var shrunk []int64
			err = s.applyRows(exec, false, w.Scope, func(yield func(Delta) bool) {
				for r := range w.Rows {
					if r.Shrunk {
						shrunk = append(shrunk, int64(r.Key))
					}
					if !yield(r.Delta) {
						return
					}
				}
			})
			if err != nil {
				return err
			}
			for _, k := range shrunk {
				if err = exec(s.q.shrink, w.Scope, k); err != nil {
					return err
				}
			}
			err = exec(s.q.addTotals, w.Scope, w.DTotals.Ham, w.DTotals.Spam, w.DTotals.Bias)
		}
		if err != nil {
			return err
		}
		for _, l := range w.Lessons {
			if l.Label == Unknown {
				err = exec(s.q.forgetLesson, w.Scope, l.FP[:])
			} else {
				err = exec(s.q.putLesson, w.Scope, l.FP[:], int(l.Label), now)
			}
			if err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// sortedDeltas sorts d by key (in place) and returns it with the deltas
// of one key added up (one statement may not update a row twice on
// PostgreSQL; the classifier merges already, so this rarely copies), and
// the keys whose rows may have shrunk to nothing (a negative count).
func sortedDeltas(d []Delta) ([]Delta, []int64) {
	slices.SortFunc(d, func(x, y Delta) int { return cmp.Compare(int64(x.Key), int64(y.Key)) })
	var shrink []int64
	out, merged := d, false
	for i, x := range d {
		switch {
		case i > 0 && x.Key == d[i-1].Key:
			if !merged { // the first duplicate: copy the distinct deltas before it
				out, merged = slices.Clone(d[:i]), true
			}
			m := &out[len(out)-1]
			m.Ham, m.Spam, m.W, m.G = m.Ham+x.Ham, m.Spam+x.Spam, m.W+x.W, m.G+x.G
		case merged:
			out = append(out, x)
		}
		if (x.Ham < 0 || x.Spam < 0) && (len(shrink) == 0 || shrink[len(shrink)-1] != int64(x.Key)) {
			shrink = append(shrink, int64(x.Key))
		}
	}
	return out, shrink
}

// queryRow runs a one-row query with a kept statement.
func (s *SQLStore) queryRow(ctx context.Context, q string, args []any, dest ...any) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	st, err := s.stmt(ctx, q)
	if err != nil {
		return err
	}
	return st.QueryRowContext(ctx, args...).Scan(dest...)
}

// Totals implements TokenStore.
func (s *SQLStore) Totals(ctx context.Context, scope string) (Totals, error) {
	var t Totals
	err := s.queryRow(ctx, s.q.totalsOne, []any{scope}, &t.Ham, &t.Spam, &t.Bias)
	if err == sql.ErrNoRows {
		return Totals{}, nil
	}
	return t, err
}

// Lesson implements TokenStore.
func (s *SQLStore) Lesson(ctx context.Context, scope string, fp [32]byte) (Label, error) {
	var l int
	err := s.queryRow(ctx, s.q.lesson, []any{scope, fp[:]}, &l)
	if err == sql.ErrNoRows {
		return Unknown, nil
	}
	return Label(l), err
}

// Size implements TokenStore.
func (s *SQLStore) Size(ctx context.Context, scope string) (int64, error) {
	var n int64
	err := s.queryRow(ctx, s.q.size, []any{scope}, &n)
	return n, err
}
