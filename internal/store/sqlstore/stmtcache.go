package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"sync"
	"time"
)

// SQLite connection pool and statement cache.
//
// database/sql's DB.QueryContext and DB.ExecContext on modernc.org/sqlite
// compile the SQL text on every call (sqlite3_prepare_v2: tokenizer,
// parser, code generator), and its default pool keeps only two idle
// connections, so under concurrent load connections are opened (schema
// read, pragmas) and closed again all the time. On the hot path (the
// classifier's token lookups, allow/block lists, greylisting, tracking)
// that was about a fifth of the gateway's CPU.
//
// The store therefore opens SQLite through a thin driver wrapper whose
// connections keep their prepared statements, keyed by SQL text: a query
// run again on the same connection binds and steps the statement it
// already has. Callers keep using plain db.QueryContext/ExecContext; they
// only have to keep their SQL text stable (no values spliced into it) to
// benefit. A statement still reading rows is never handed out twice: a
// nested use of the same SQL on one connection prepares a private
// statement, finalized when its rows are closed.

const (
	// stmtCacheSize is the number of prepared statements a connection
	// keeps; the least recently used one is finalized to make room.
	stmtCacheSize = 64
	// stmtCacheMaxSQL: longer SQL texts are not cached (they are usually
	// generated per call, e.g. IN lists of varying length, and would
	// only push out the statements that are reused).
	stmtCacheMaxSQL = 8 << 10

	// sqliteMaxIdleConns is how many SQLite connections the pool keeps
	// open between uses. It is the concurrency the pool serves without
	// opening connections; more are opened when needed (there is no
	// upper limit: SQLite in WAL mode runs readers concurrently and
	// serializes writers with busy_timeout).
	sqliteMaxIdleConns = 32
	// sqliteConnMaxIdleTime closes connections left idle that long, so a
	// burst does not keep its connections (and their page caches) forever.
	sqliteConnMaxIdleTime = 2 * time.Minute
)

// openCachedSQLite opens dsn with the registered "sqlite" driver
// (modernc.org/sqlite, with whatever functions or hooks were registered
// on it) behind the statement cache, and sets the pool up for SQLite.
func openCachedSQLite(dsn string) (*sql.DB, error) {
	plain, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	base := plain.Driver()
	plain.Close() // never connected: sql.Open only looks the driver up
	db := sql.OpenDB(&cachingConnector{dsn: dsn, drv: &cachingDriver{base: base}})
	db.SetMaxIdleConns(sqliteMaxIdleConns)
	db.SetConnMaxIdleTime(sqliteConnMaxIdleTime)
	return db, nil
}

type cachingDriver struct{ base driver.Driver }

func (d *cachingDriver) Open(name string) (driver.Conn, error) {
	c, err := d.base.Open(name)
	if err != nil {
		return nil, err
	}
	return newCachingConn(c)
}

type cachingConnector struct {
	dsn string
	drv *cachingDriver
}

func (c *cachingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.drv.Open(c.dsn)
}

func (c *cachingConnector) Driver() driver.Driver { return c.drv }

// baseConn is what the wrapper needs of the underlying connection.
type baseConn interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
}

var errNotContextConn = errors.New("sqlstore: sqlite driver connection lacks context methods")

func newCachingConn(c driver.Conn) (driver.Conn, error) {
	bc, ok := c.(baseConn)
	if !ok {
		c.Close()
		return nil, errNotContextConn
	}
	return &cachingConn{c: bc, stmts: make(map[string]*cachedStmt)}, nil
}

// cachingConn is a driver connection with a cache of prepared statements.
// database/sql never uses one connection from two goroutines at once; the
// mutex only makes that assumption cheap to keep.
type cachingConn struct {
	c baseConn

	mu    sync.Mutex
	stmts map[string]*cachedStmt
	tick  uint64 // use counter for LRU eviction
}

type cachedStmt struct {
	query  string
	s      driver.Stmt
	cached bool   // owned by the cache (else: finalized on release)
	busy   bool   // rows still open on it
	used   uint64 // cachingConn.tick at the last use
}

var (
	_ driver.Conn               = (*cachingConn)(nil)
	_ driver.ConnPrepareContext = (*cachingConn)(nil)
	_ driver.ConnBeginTx        = (*cachingConn)(nil)
	_ driver.QueryerContext     = (*cachingConn)(nil)
	_ driver.ExecerContext      = (*cachingConn)(nil)
	_ driver.Pinger             = (*cachingConn)(nil)
	_ driver.SessionResetter    = (*cachingConn)(nil)
	_ driver.Validator          = (*cachingConn)(nil)
)

// acquire returns a statement for query, marked busy: the cached one if it
// is free, else a newly prepared one (cached when there is room or an
// idle statement to evict).
func (c *cachingConn) acquire(ctx context.Context, query string) (*cachedStmt, error) {
	c.mu.Lock()
	c.tick++
	if st, ok := c.stmts[query]; ok && !st.busy {
		st.busy, st.used = true, c.tick
		c.mu.Unlock()
		return st, nil
	}
	c.mu.Unlock()
	s, err := c.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	st := &cachedStmt{query: query, s: s, busy: true}
	if len(query) > stmtCacheMaxSQL {
		return st, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.stmts[query]; dup {
		return st, nil // the cached one is busy (nested use): this one is private
	}
	if len(c.stmts) >= stmtCacheSize && !c.evictLocked() {
		return st, nil
	}
	st.cached, st.used = true, c.tick
	c.stmts[query] = st
	return st, nil
}

// evictLocked finalizes the least recently used idle statement.
func (c *cachingConn) evictLocked() bool {
	var old *cachedStmt
	for _, st := range c.stmts {
		if !st.busy && (old == nil || st.used < old.used) {
			old = st
		}
	}
	if old == nil {
		return false
	}
	delete(c.stmts, old.query)
	old.s.Close()
	return true
}

// release gives a statement back after use.
func (c *cachingConn) release(st *cachedStmt) error {
	if !st.cached {
		return st.s.Close()
	}
	c.mu.Lock()
	st.busy = false
	c.mu.Unlock()
	return nil
}

func (c *cachingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	st, err := c.acquire(ctx, query)
	if err != nil {
		return nil, err
	}
	q, ok := st.s.(driver.StmtQueryContext)
	if !ok {
		c.release(st)
		return nil, driver.ErrSkip
	}
	rows, err := q.QueryContext(ctx, args)
	if err != nil {
		c.release(st)
		return nil, err
	}
	return &cachingRows{Rows: rows, c: c, st: st}, nil
}

func (c *cachingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	st, err := c.acquire(ctx, query)
	if err != nil {
		return nil, err
	}
	defer c.release(st)
	x, ok := st.s.(driver.StmtExecContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	return x.ExecContext(ctx, args)
}

// Prepare and PrepareContext hand out statements the caller owns (DB.Prepare,
// Tx.Prepare); they are not cached.
func (c *cachingConn) Prepare(query string) (driver.Stmt, error) {
	return c.c.PrepareContext(context.Background(), query)
}

func (c *cachingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.c.PrepareContext(ctx, query)
}

func (c *cachingConn) Begin() (driver.Tx, error) {
	return c.c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *cachingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.c.BeginTx(ctx, opts)
}

// Close finalizes the cached statements, then closes the connection (an
// unfinalized statement would keep SQLite's connection open).
func (c *cachingConn) Close() error {
	c.mu.Lock()
	stmts := c.stmts
	c.stmts = map[string]*cachedStmt{}
	c.mu.Unlock()
	for _, st := range stmts {
		st.s.Close()
	}
	return c.c.Close()
}

func (c *cachingConn) Ping(ctx context.Context) error {
	if p, ok := c.c.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *cachingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.c.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *cachingConn) IsValid() bool {
	if v, ok := c.c.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// cachingRows gives its statement back when closed.
type cachingRows struct {
	driver.Rows
	c      *cachingConn
	st     *cachedStmt
	closed bool
}

func (r *cachingRows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.Rows.Close()
	if e := r.c.release(r.st); err == nil {
		err = e
	}
	return err
}

func (r *cachingRows) ColumnTypeDatabaseTypeName(i int) string {
	if x, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return x.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *cachingRows) ColumnTypeLength(i int) (int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return x.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *cachingRows) ColumnTypeNullable(i int) (bool, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return x.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *cachingRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return x.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *cachingRows) ColumnTypeScanType(i int) reflect.Type {
	if x, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return x.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
