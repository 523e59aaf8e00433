// Package quarantine holds suspicious mail where a human can find and
// recover it: every filter has false positives, and a false positive must
// never be unrecoverable.
//
// A held message is one file under the quarantine directory (the bytes as
// received) plus one SQL row per recipient (the index the UI, the CLI and
// digests query). Each recipient's copy is released, deleted or reported
// on its own, so one recipient's choice never delivers or destroys mail for
// another. Every state change is written to an audit table.
package quarantine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

// Enqueuer puts a message into Moat's delivery queue (package queue).
type Enqueuer interface {
	Enqueue(env *queue.Envelope, body io.Reader) (string, error)
}

// Scanner scans a message for viruses (package check/clamav).
type Scanner interface {
	Scan(ctx context.Context, r io.Reader) (infected bool, signature string, err error)
}

// Learner trains and queries the statistical classifier (package classify).
type Learner interface {
	Learn(ctx context.Context, raw []byte, spam bool, user string) error
	Score(ctx context.Context, raw []byte, user string) (float64, error)
}

// State is the state of one recipient's copy of a held message.
type State string

const (
	Held      State = "held"
	Releasing State = "releasing" // claimed by a release in progress
	Released  State = "released"
	Deleted   State = "deleted"
	Expired   State = "expired"
)

// Errors.
var (
	ErrNotFound = errors.New("quarantine: no such message")
	ErrNotHeld  = errors.New("quarantine: message is no longer held")
	ErrInfected = errors.New("quarantine: message contains a virus; not released")
)

// Entry describes one held message as seen by one recipient.
type Entry struct {
	ID       string    // this recipient's entry: "<msgid>-<n>"
	MsgID    string    // the held message (one file), shared by its recipients' entries
	Received time.Time // when Moat received it
	From     string    // envelope sender ("" = null sender)
	Rcpt     string    // the recipient this entry belongs to
	Rcpts    []string  // every envelope recipient held (input of Hold)
	Client   queue.ClientInfo
	// HeaderFrom and Subject are the decoded header field values.
	HeaderFrom string
	Subject    string
	Size       int64
	Score      float64
	Action     string           // the policy action that held it, e.g. "quarantine"
	Reasons    []verdict.Symbol // the symbols with their scores
	Domain     string           // the customer domain of Rcpt
	Refused    bool             // the sender got a 5xx, but a copy was kept ("reject, yet recoverable")
	// Prepend holds header fields Moat added (CRLF-terminated), prepended
	// again when the message is released.
	Prepend string
	State   State
	StateBy string // who made the last state change
	StateAt time.Time
	Expires time.Time
}

// AuditRecord is one state change.
type AuditRecord struct {
	At      time.Time
	EntryID string
	MsgID   string
	Action  string // held, release, delete, report_spam, expire, allow_sender, block_sender, release_refused
	By      string
	Detail  string
}

// Deps are the collaborators of the Store. DB is required; the others may
// be nil (no queue: Release fails; no scanner: released mail is not
// re-scanned; no learner: nothing is learned).
type Deps struct {
	DB *sql.DB
	// Driver is the SQL dialect of DB: "sqlite" (default) or "postgres",
	// as sqlstore.DB.Driver reports.
	Driver     string
	Enqueuer   Enqueuer
	Scanner    Scanner
	Learner    Learner
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Secret keys the HMAC of digest links. If empty, a random secret is
	// created once and kept in the database.
	Secret []byte
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Store is the quarantine.
type Store struct {
	cfg    Config
	db     *sql.DB
	q      *queries
	root   *os.Root
	enq    Enqueuer
	scan   Scanner
	learn  Learner
	log    *slog.Logger
	now    func() time.Time
	secret []byte
	Prefs  *Prefs

	mHeld, mReleased, mDeleted, mSpam, mExpired, mDigests prometheus.Counter
	mRefusedVirus                                         prometheus.Counter
}

// sqliteSchema is the schema on SQLite (unchanged since the first release).
var sqliteSchema = []string{
	`CREATE TABLE IF NOT EXISTS q_entries (
		id TEXT PRIMARY KEY,
		msg_id TEXT NOT NULL,
		received INTEGER NOT NULL,
		env_from TEXT NOT NULL,
		rcpt TEXT NOT NULL,
		rcpts TEXT NOT NULL,
		client TEXT NOT NULL,
		header_from TEXT NOT NULL,
		subject TEXT NOT NULL,
		size INTEGER NOT NULL,
		score REAL NOT NULL,
		action TEXT NOT NULL,
		reasons TEXT NOT NULL,
		domain TEXT NOT NULL,
		refused INTEGER NOT NULL,
		prepend TEXT NOT NULL,
		state TEXT NOT NULL,
		state_by TEXT NOT NULL DEFAULT '',
		state_at INTEGER NOT NULL,
		expires INTEGER NOT NULL,
		digested INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE INDEX IF NOT EXISTS q_entries_rcpt ON q_entries(rcpt, received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_domain ON q_entries(domain, received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_received ON q_entries(received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_msg ON q_entries(msg_id)`,
	`CREATE INDEX IF NOT EXISTS q_entries_expires ON q_entries(expires)`,
	`CREATE INDEX IF NOT EXISTS q_entries_digest ON q_entries(digested, state)`,
	`CREATE TABLE IF NOT EXISTS q_audit (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		at INTEGER NOT NULL,
		entry_id TEXT NOT NULL,
		msg_id TEXT NOT NULL,
		action TEXT NOT NULL,
		by TEXT NOT NULL,
		detail TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS q_audit_entry ON q_audit(entry_id)`,
	`CREATE TABLE IF NOT EXISTS q_prefs (
		rcpt TEXT NOT NULL,
		sender TEXT NOT NULL,
		kind TEXT NOT NULL,
		created INTEGER NOT NULL,
		by TEXT NOT NULL,
		PRIMARY KEY (rcpt, sender)
	)`,
	`CREATE TABLE IF NOT EXISTS q_thresholds (
		rcpt TEXT PRIMARY KEY,
		tag REAL,
		quarantine REAL,
		reject REAL,
		updated INTEGER NOT NULL,
		by TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS q_links_used (
		hash TEXT PRIMARY KEY,
		used INTEGER NOT NULL,
		expires INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS q_meta (
		key TEXT PRIMARY KEY,
		value BLOB NOT NULL
	)`,
}

var postgresSchema = []string{
	`CREATE TABLE IF NOT EXISTS q_entries (
		id TEXT PRIMARY KEY,
		msg_id TEXT NOT NULL,
		received BIGINT NOT NULL,
		env_from TEXT NOT NULL,
		rcpt TEXT NOT NULL,
		rcpts TEXT NOT NULL,
		client TEXT NOT NULL,
		header_from TEXT NOT NULL,
		subject TEXT NOT NULL,
		size BIGINT NOT NULL,
		score DOUBLE PRECISION NOT NULL,
		action TEXT NOT NULL,
		reasons TEXT NOT NULL,
		domain TEXT NOT NULL,
		refused INTEGER NOT NULL,
		prepend TEXT NOT NULL,
		state TEXT NOT NULL,
		state_by TEXT NOT NULL DEFAULT '',
		state_at BIGINT NOT NULL,
		expires BIGINT NOT NULL,
		digested INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE INDEX IF NOT EXISTS q_entries_rcpt ON q_entries(rcpt, received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_domain ON q_entries(domain, received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_received ON q_entries(received)`,
	`CREATE INDEX IF NOT EXISTS q_entries_msg ON q_entries(msg_id)`,
	`CREATE INDEX IF NOT EXISTS q_entries_expires ON q_entries(expires)`,
	`CREATE INDEX IF NOT EXISTS q_entries_digest ON q_entries(digested, state)`,
	`CREATE TABLE IF NOT EXISTS q_audit (
		id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
		at BIGINT NOT NULL,
		entry_id TEXT NOT NULL,
		msg_id TEXT NOT NULL,
		action TEXT NOT NULL,
		by TEXT NOT NULL,
		detail TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS q_audit_entry ON q_audit(entry_id)`,
	`CREATE TABLE IF NOT EXISTS q_prefs (
		rcpt TEXT NOT NULL,
		sender TEXT NOT NULL,
		kind TEXT NOT NULL,
		created BIGINT NOT NULL,
		by TEXT NOT NULL,
		PRIMARY KEY (rcpt, sender)
	)`,
	`CREATE TABLE IF NOT EXISTS q_thresholds (
		rcpt TEXT PRIMARY KEY,
		tag DOUBLE PRECISION,
		quarantine DOUBLE PRECISION,
		reject DOUBLE PRECISION,
		updated BIGINT NOT NULL,
		by TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS q_links_used (
		hash TEXT PRIMARY KEY,
		used BIGINT NOT NULL,
		expires BIGINT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS q_meta (
		key TEXT PRIMARY KEY,
		value BYTEA NOT NULL
	)`,
}

// Migrate creates the quarantine tables on an SQLite db if they do not
// exist.
func Migrate(ctx context.Context, db *sql.DB) error { return MigrateDriver(ctx, db, "sqlite") }

// MigrateDriver creates the quarantine tables for driver ("sqlite" or
// "postgres") if they do not exist.
func MigrateDriver(ctx context.Context, db *sql.DB, driver string) error {
	schema := sqliteSchema
	switch driver {
	case "", "sqlite":
	case "postgres":
		schema = postgresSchema
	default:
		return fmt.Errorf("quarantine: unknown driver %q", driver)
	}
	for _, q := range schema {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("quarantine: migrate: %w", err)
		}
	}
	return nil
}

// New opens the quarantine. It runs Migrate and creates the directory.
func New(cfg Config, deps Deps) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.DB == nil {
		return nil, errors.New("quarantine: no database")
	}
	ctx := context.Background()
	if err := MigrateDriver(ctx, deps.DB, deps.Driver); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	root, err := os.OpenRoot(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	s := &Store{cfg: cfg, db: deps.DB, q: newQueries(deps.Driver), root: root, enq: deps.Enqueuer, scan: deps.Scanner, learn: deps.Learner,
		log: deps.Logger, now: deps.Now, secret: deps.Secret}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.Prefs = &Prefs{db: deps.DB, q: s.q, now: s.now}
	if len(s.secret) == 0 {
		if s.secret, err = loadSecret(ctx, deps.DB, s.q); err != nil {
			root.Close()
			return nil, err
		}
	}
	c := func(name, help string) prometheus.Counter {
		m := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "moat", Subsystem: "quarantine", Name: name, Help: help})
		if deps.Registerer != nil {
			deps.Registerer.MustRegister(m)
		}
		return m
	}
	s.mHeld = c("held_total", "Messages put into the quarantine.")
	s.mReleased = c("released_total", "Recipient copies released from the quarantine.")
	s.mDeleted = c("deleted_total", "Recipient copies deleted from the quarantine.")
	s.mSpam = c("reported_spam_total", "Recipient copies reported as spam.")
	s.mExpired = c("expired_total", "Recipient copies expired after retention.")
	s.mDigests = c("digests_sent_total", "Digest emails queued.")
	s.mRefusedVirus = c("release_refused_virus_total", "Releases refused because the re-scan found a virus.")
	return s, nil
}

// Close releases the directory handle (the DB belongs to the caller).
func (s *Store) Close() error { return s.root.Close() }

func loadSecret(ctx context.Context, db *sql.DB, q *queries) ([]byte, error) {
	var v []byte
	err := db.QueryRowContext(ctx, q.getSecret).Scan(&v)
	if err == nil && len(v) >= 32 {
		return v, nil
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	v = make([]byte, 32)
	rand.Read(v)
	if _, err := db.ExecContext(ctx, q.putSecret, v); err != nil {
		return nil, err
	}
	// Another process may have won the race: read back what is stored.
	if err := db.QueryRowContext(ctx, q.getSecret).Scan(&v); err != nil {
		return nil, err
	}
	return v, nil
}

var idEnc = base32.NewEncoding("abcdefghijkmnpqrstuvwxyz23456789").WithPadding(base32.NoPadding)

func newID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return idEnc.EncodeToString(b)
}

var validMsgID = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// Hold stores a message and one entry per recipient in e.Rcpts (e.Rcpt
// alone if Rcpts is empty). The message file and its directory entry are
// fsynced and the rows committed before Hold returns, so the caller may
// answer 250 (or a recoverable 550) right after. It returns the message ID.
// e.MsgID is used as the ID if set and safe as a file name.
func (s *Store) Hold(ctx context.Context, e *Entry, body io.Reader) (string, error) {
	id := e.MsgID
	if !validMsgID.MatchString(id) {
		id = newID()
	}
	name := id + ".eml"
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if errors.Is(err, fs.ErrExist) {
		id = newID()
		name = id + ".eml"
		f, err = s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	}
	if err != nil {
		return "", fmt.Errorf("quarantine: create: %w", err)
	}
	w := bufio.NewWriterSize(f, 64<<10)
	n, err := io.Copy(w, body)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.syncDir()
	}
	if err != nil {
		s.root.Remove(name)
		return "", fmt.Errorf("quarantine: write: %w", err)
	}
	if e.Size == 0 {
		e.Size = n
	}
	if err := s.insert(ctx, id, e); err != nil {
		s.root.Remove(name)
		return "", err
	}
	s.mHeld.Inc()
	return id, nil
}

// HoldFile is Hold for a message already in a file (a spool draft): the
// file is renamed into the quarantine directory when it is on the same
// file system, and copied otherwise. On success the file at path is gone.
func (s *Store) HoldFile(ctx context.Context, e *Entry, path string) (string, error) {
	id := e.MsgID
	if !validMsgID.MatchString(id) {
		id = newID()
	}
	dst := s.cfg.Dir + string(os.PathSeparator) + id + ".eml"
	if _, err := os.Lstat(dst); err == nil {
		id = newID()
		dst = s.cfg.Dir + string(os.PathSeparator) + id + ".eml"
	}
	if err := os.Rename(path, dst); err != nil {
		f, oerr := os.Open(path)
		if oerr != nil {
			return "", fmt.Errorf("quarantine: %w", oerr)
		}
		defer f.Close()
		e2 := *e
		e2.MsgID = id
		id, err = s.Hold(ctx, &e2, f)
		if err == nil {
			os.Remove(path)
		}
		return id, err
	}
	if err := s.syncDir(); err != nil {
		os.Rename(dst, path)
		return "", fmt.Errorf("quarantine: %w", err)
	}
	if e.Size == 0 {
		if st, err := os.Stat(dst); err == nil {
			e.Size = st.Size()
		}
	}
	if err := s.insert(ctx, id, e); err != nil {
		os.Rename(dst, path)
		return "", err
	}
	s.mHeld.Inc()
	return id, nil
}

func (s *Store) syncDir() error {
	d, err := s.root.Open(".")
	if err != nil {
		return err
	}
	err = d.Sync()
	d.Close()
	return err
}

func (s *Store) insert(ctx context.Context, id string, e *Entry) error {
	rcpts := e.Rcpts
	if len(rcpts) == 0 && e.Rcpt != "" {
		rcpts = []string{e.Rcpt}
	}
	if len(rcpts) == 0 {
		return errors.New("quarantine: no recipients")
	}
	received := e.Received
	if received.IsZero() {
		received = s.now()
	}
	rj, _ := json.Marshal(rcpts)
	cj, _ := json.Marshal(e.Client)
	reasons := e.Reasons
	if reasons == nil {
		reasons = []verdict.Symbol{}
	}
	sj, _ := json.Marshal(reasons)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	defer tx.Rollback()
	now := s.now()
	for i, r := range rcpts {
		dom := domainOf(r)
		if dom == "" {
			dom = strings.ToLower(e.Domain)
		}
		eid := fmt.Sprintf("%s-%d", id, i+1)
		exp := received.Add(s.cfg.retention(dom))
		_, err := tx.ExecContext(ctx, s.q.insEntry,
			eid, id, received.UnixMilli(), e.From, strings.ToLower(r), string(rj), string(cj), e.HeaderFrom, e.Subject,
			e.Size, e.Score, e.Action, string(sj), dom, b2i(e.Refused), e.Prepend, string(Held), "moat", now.UnixMilli(), exp.UnixMilli())
		if err != nil {
			return fmt.Errorf("quarantine: insert: %w", err)
		}
		detail := fmt.Sprintf("score=%s action=%s", verdict.FormatScore(e.Score), e.Action)
		if e.Refused {
			detail += " refused"
		}
		if err := s.q.audit(ctx, tx, now, eid, id, "held", "moat", detail); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("quarantine: commit: %w", err)
	}
	return nil
}

type execer interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

const entryCols = `id, msg_id, received, env_from, rcpt, rcpts, client, header_from, subject, size, score, action, reasons,
	domain, refused, prepend, state, state_by, state_at, expires`

type scanner interface{ Scan(dest ...any) error }

func scanEntry(r scanner) (*Entry, error) {
	var e Entry
	var received, stateAt, expires int64
	var rcpts, client, reasons, state string
	err := r.Scan(&e.ID, &e.MsgID, &received, &e.From, &e.Rcpt, &rcpts, &client, &e.HeaderFrom, &e.Subject, &e.Size,
		&e.Score, &e.Action, &reasons, &e.Domain, &e.Refused, &e.Prepend, &state, &e.StateBy, &stateAt, &expires)
	if err != nil {
		return nil, err
	}
	e.Received = time.UnixMilli(received)
	e.StateAt = time.UnixMilli(stateAt)
	e.Expires = time.UnixMilli(expires)
	e.State = State(state)
	json.Unmarshal([]byte(rcpts), &e.Rcpts)
	json.Unmarshal([]byte(client), &e.Client)
	json.Unmarshal([]byte(reasons), &e.Reasons)
	return &e, nil
}

// Get returns one entry by its ID.
func (s *Store) Get(ctx context.Context, id string) (*Entry, error) {
	e, err := scanEntry(s.db.QueryRowContext(ctx, s.q.getEntry, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	return e, nil
}

// EntriesOf returns the entries of one held message (one per recipient).
func (s *Store) EntriesOf(ctx context.Context, msgID string) ([]*Entry, error) {
	rows, err := s.db.QueryContext(ctx, s.q.entriesOf, msgID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Open returns the raw message bytes of an entry (as received, without
// Moat's prepended fields).
func (s *Store) Open(ctx context.Context, id string) (io.ReadCloser, error) {
	e, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	f, err := s.root.Open(e.MsgID + ".eml")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	return f, err
}

// Filter selects entries for List.
type Filter struct {
	// Restrict limits the result to entries whose Rcpt is in OnlyRcpts or
	// whose Domain is in OnlyDomains (the caller's authorization scope).
	// With Restrict set and both lists empty nothing matches.
	Restrict    bool
	OnlyRcpts   []string
	OnlyDomains []string

	Rcpt     string    // exact recipient
	Domain   string    // exact domain
	Search   string    // substring of subject, header From or envelope sender
	Since    time.Time // received at or after
	Until    time.Time // received before
	MinScore *float64
	// State selects one state; "" means held (and releasing); "all" means any.
	State  State
	Limit  int // default 50, at most 1000
	Offset int
}

func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(s) + "%"
}

// List returns the entries matching f, newest first, and the total number
// of matches (for paging).
func (s *Store) List(ctx context.Context, f Filter) ([]*Entry, int, error) {
	var where []string
	var args []any
	in := func(col string, vals []string) string {
		ph := make([]string, len(vals))
		for i, v := range vals {
			ph[i] = "?"
			args = append(args, strings.ToLower(v))
		}
		return col + " IN (" + strings.Join(ph, ",") + ")"
	}
	if f.Restrict {
		var or []string
		if len(f.OnlyRcpts) > 0 {
			or = append(or, in("rcpt", f.OnlyRcpts))
		}
		if len(f.OnlyDomains) > 0 {
			or = append(or, in("domain", f.OnlyDomains))
		}
		if len(or) == 0 {
			return nil, 0, nil
		}
		where = append(where, "("+strings.Join(or, " OR ")+")")
	}
	if f.Rcpt != "" {
		where = append(where, "rcpt = ?")
		args = append(args, strings.ToLower(f.Rcpt))
	}
	if f.Domain != "" {
		where = append(where, "domain = ?")
		args = append(args, strings.ToLower(f.Domain))
	}
	if f.Search != "" {
		where = append(where, "(subject "+s.q.like+` ? ESCAPE '\' OR header_from `+s.q.like+` ? ESCAPE '\' OR env_from `+s.q.like+` ? ESCAPE '\')`)
		p := likeEscape(f.Search)
		args = append(args, p, p, p)
	}
	if !f.Since.IsZero() {
		where = append(where, "received >= ?")
		args = append(args, f.Since.UnixMilli())
	}
	if !f.Until.IsZero() {
		where = append(where, "received < ?")
		args = append(args, f.Until.UnixMilli())
	}
	if f.MinScore != nil {
		where = append(where, "score >= ?")
		args = append(args, *f.MinScore)
	}
	switch f.State {
	case "":
		where = append(where, "state IN ('held','releasing')")
	case "all":
	case Held, Releasing, Released, Deleted, Expired:
		where = append(where, "state = ?")
		args = append(args, string(f.State))
	default:
		return nil, 0, fmt.Errorf("quarantine: unknown state %q (held, releasing, released, deleted, expired or all)", f.State)
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	var total int
	if err := s.db.QueryRowContext(ctx, s.q.rebind(`SELECT COUNT(*) FROM q_entries`+cond), args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("quarantine: list: %w", err)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	rows, err := s.db.QueryContext(ctx, s.q.rebind(`SELECT `+entryCols+` FROM q_entries`+cond+` ORDER BY received DESC, id LIMIT ? OFFSET ?`),
		append(args, limit, max(f.Offset, 0))...)
	if err != nil {
		return nil, 0, fmt.Errorf("quarantine: list: %w", err)
	}
	defer rows.Close()
	var out []*Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, e)
	}
	return out, total, rows.Err()
}

// Audit returns the audit records of one entry, oldest first.
func (s *Store) Audit(ctx context.Context, entryID string) ([]AuditRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.q.auditOf, entryID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var a AuditRecord
		var at int64
		if err := rows.Scan(&at, &a.EntryID, &a.MsgID, &a.Action, &a.By, &a.Detail); err != nil {
			return nil, err
		}
		a.At = time.UnixMilli(at)
		out = append(out, a)
	}
	return out, rows.Err()
}

// claim moves an entry from held to the given state; ErrNotHeld if it was
// not held (someone else acted first).
func (s *Store) claim(ctx context.Context, id string, to State, by string) (*Entry, error) {
	e, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	res, err := s.db.ExecContext(ctx, s.q.claim,
		string(to), by, s.now().UnixMilli(), id)
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, ErrNotHeld
	}
	return e, nil
}

func (s *Store) setState(ctx context.Context, e *Entry, to State, by, action, detail string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := s.now()
	if _, err := tx.ExecContext(ctx, s.q.setState, string(to), by, now.UnixMilli(), e.ID); err != nil {
		return err
	}
	if err := s.q.audit(ctx, tx, now, e.ID, e.MsgID, action, by, detail); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *Store) readBody(e *Entry) ([]byte, error) {
	b, err := s.root.ReadFile(e.MsgID + ".eml")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	return b, err
}

// ReleaseOptions say how to release.
type ReleaseOptions struct {
	By          string // who releases (user name, "cli", "digest:<rcpt>")
	Teach       bool   // teach the classifier that this is ham
	AllowSender bool   // always allow the envelope sender for this recipient
}

// Release re-scans the held copy for viruses, puts it into the delivery
// queue for its recipient, and optionally teaches ham and allow-lists the
// sender. It returns the queue ID. A message found infected stays held
// and ErrInfected is returned.
func (s *Store) Release(ctx context.Context, id string, o ReleaseOptions) (string, error) {
	if s.enq == nil {
		return "", errors.New("quarantine: no delivery queue configured")
	}
	e, err := s.claim(ctx, id, Releasing, o.By)
	if err != nil {
		return "", err
	}
	unclaim := func() {
		s.db.ExecContext(context.WithoutCancel(ctx), s.q.unclaim, id)
	}
	raw, err := s.readBody(e)
	if err != nil {
		unclaim()
		return "", err
	}
	if s.scan != nil {
		infected, sig, err := s.scan.Scan(ctx, bytes.NewReader(raw))
		if err != nil {
			unclaim()
			return "", fmt.Errorf("quarantine: re-scan: %w", err)
		}
		if infected {
			unclaim()
			s.mRefusedVirus.Inc()
			s.q.audit(ctx, s.db, s.now(), e.ID, e.MsgID, "release_refused", o.By, "virus "+sig)
			s.log.Warn("quarantine release refused: virus", "entry", e.ID, "by", o.By, "signature", sig)
			return "", ErrInfected
		}
	}
	now := s.now()
	env := &queue.Envelope{
		From:     e.From,
		Rcpts:    []queue.RcptState{{Addr: e.Rcpt, Domain: e.Domain, Status: "pending"}},
		Received: now,
		Client:   e.Client,
		Prepend:  e.Prepend + "X-Moat-Released: " + sanitizeHeader(o.By) + "; " + now.UTC().Format(time.RFC1123Z) + "\r\n",
		Size:     int64(len(raw)),
		EightBit: has8bit(raw),
	}
	qid, err := s.enq.Enqueue(env, bytes.NewReader(raw))
	if err != nil {
		unclaim()
		return "", fmt.Errorf("quarantine: enqueue: %w", err)
	}
	// The message is in the queue now: record it, learn and clean up even
	// if the caller (an HTTP request) has gone away meanwhile, or the row
	// would stay "releasing" although the mail was delivered.
	ctx = context.WithoutCancel(ctx)
	detail := "queue=" + qid
	if o.Teach {
		detail += " teach"
	}
	if o.AllowSender {
		detail += " allow_sender"
	}
	if err := s.setState(ctx, e, Released, o.By, "release", detail); err != nil {
		// The message is queued; the row says releasing. Log loudly.
		s.log.Error("quarantine: released but state not recorded", "entry", e.ID, "queue_id", qid, "err", err)
	}
	s.mReleased.Inc()
	s.log.Info("quarantine release", "entry", e.ID, "msg_id", e.MsgID, "rcpt", e.Rcpt, "by", o.By, "queue_id", qid)
	if o.Teach && s.learn != nil {
		if err := s.learn.Learn(ctx, raw, false, e.Rcpt); err != nil {
			s.log.Warn("quarantine: learn ham failed", "entry", e.ID, "err", err)
		}
	}
	if o.AllowSender && e.From != "" {
		if err := s.Prefs.AllowSender(ctx, e.Rcpt, e.From, o.By); err != nil {
			s.log.Warn("quarantine: allow sender failed", "entry", e.ID, "err", err)
		}
	}
	s.cleanup(ctx, e.MsgID)
	return qid, nil
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func sanitizeHeader(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// Delete discards one recipient's copy.
func (s *Store) Delete(ctx context.Context, id, by string) error {
	e, err := s.claim(ctx, id, Deleted, by)
	if err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx) // the copy is deleted: audit and clean up
	s.q.audit(ctx, s.db, s.now(), e.ID, e.MsgID, "delete", by, "")
	s.mDeleted.Inc()
	s.cleanup(ctx, e.MsgID)
	return nil
}

// ReportSpam teaches the classifier that the message is spam (for this
// recipient) and deletes the copy.
//
// The copy is claimed first (state releasing: an action in progress, the
// file stays), so a concurrent release or delete of the same copy cannot
// make the classifier learn spam for mail that was released. If learning
// fails the copy is held again.
func (s *Store) ReportSpam(ctx context.Context, id, by string) error {
	e, err := s.claim(ctx, id, Releasing, by)
	if err != nil {
		return err
	}
	unclaim := func() {
		s.db.ExecContext(context.WithoutCancel(ctx), s.q.unclaim, id)
	}
	if s.learn != nil {
		raw, err := s.readBody(e)
		if err != nil {
			unclaim()
			return err
		}
		if err := s.learn.Learn(ctx, raw, true, e.Rcpt); err != nil {
			unclaim()
			return fmt.Errorf("quarantine: learn spam: %w", err)
		}
	}
	ctx = context.WithoutCancel(ctx)
	if err := s.setState(ctx, e, Deleted, by, "report_spam", ""); err != nil {
		unclaim()
		return fmt.Errorf("quarantine: %w", err)
	}
	s.mSpam.Inc()
	s.cleanup(ctx, e.MsgID)
	return nil
}

// cleanup removes the message file once no recipient's copy is held.
func (s *Store) cleanup(ctx context.Context, msgID string) {
	var n int
	if err := s.db.QueryRowContext(ctx, s.q.liveCopies, msgID).Scan(&n); err != nil || n > 0 {
		return
	}
	if err := s.root.Remove(msgID + ".eml"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("quarantine: remove file", "msg_id", msgID, "err", err)
	}
}

// Expire marks every held entry past its retention as expired, removes
// the files no longer needed, and deletes rows (not audit records) older
// than twice the retention. It returns the number of entries expired.
func (s *Store) Expire(ctx context.Context) (int, error) {
	now := s.now()
	if err := s.recoverStale(ctx, now); err != nil {
		return 0, err
	}
	rows, err := s.db.QueryContext(ctx, s.q.expiring, now.UnixMilli())
	if err != nil {
		return 0, err
	}
	type idm struct{ id, msg string }
	var list []idm
	for rows.Next() {
		var x idm
		if err := rows.Scan(&x.id, &x.msg); err != nil {
			rows.Close()
			return 0, err
		}
		list = append(list, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := 0
	msgs := map[string]bool{}
	for _, x := range list {
		e := &Entry{ID: x.id, MsgID: x.msg}
		res, err := s.db.ExecContext(ctx, s.q.expire, now.UnixMilli(), x.id)
		if err != nil {
			return n, err
		}
		if c, _ := res.RowsAffected(); c == 1 {
			s.q.audit(ctx, s.db, now, e.ID, e.MsgID, "expire", "moat", "")
			n++
			msgs[x.msg] = true
		}
	}
	for m := range msgs {
		s.cleanup(ctx, m)
	}
	s.mExpired.Add(float64(n))
	// Forget finished rows long past retention; the audit log keeps them.
	// A file whose removal failed earlier (read-only or full disk) goes
	// with its last rows.
	cutoff := now.Add(-s.cfg.Retention).UnixMilli()
	if mrows, err := s.db.QueryContext(ctx, s.q.forgetMsgs, cutoff); err == nil {
		var ms []string
		for mrows.Next() {
			var m string
			if mrows.Scan(&m) == nil {
				ms = append(ms, m)
			}
		}
		mrows.Close()
		for _, m := range ms {
			s.cleanup(ctx, m)
		}
	}
	if _, err := s.db.ExecContext(ctx, s.q.forget,
		now.Add(-s.cfg.Retention).UnixMilli()); err != nil {
		return n, err
	}
	s.db.ExecContext(ctx, s.q.forgetLinks, now.Unix())
	return n, nil
}

// staleReleasing is how long a copy may stay "releasing" (a release or a
// spam report in progress: re-scan, enqueue, learn) before it is taken to
// be interrupted (crash, kill) and held again. Far above the clamd scan
// timeout.
const staleReleasing = 15 * time.Minute

// recoverStale holds again the copies whose release or spam report was
// interrupted (the process died between the claim and the final state), so
// they can be released, deleted and expired again instead of staying
// "releasing" for ever. If the process died after the message was queued
// but before the state was written, a second release delivers it twice:
// better than mail nobody can recover.
func (s *Store) recoverStale(ctx context.Context, now time.Time) error {
	cut := now.Add(-staleReleasing).UnixMilli()
	rows, err := s.db.QueryContext(ctx, s.q.staleReleasing, cut)
	if err != nil {
		return err
	}
	type idm struct{ id, msg, by string }
	var list []idm
	for rows.Next() {
		var x idm
		if err := rows.Scan(&x.id, &x.msg, &x.by); err != nil {
			rows.Close()
			return err
		}
		list = append(list, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, x := range list {
		res, err := s.db.ExecContext(ctx, s.q.unstick, now.UnixMilli(), x.id, cut)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 1 {
			s.q.audit(ctx, s.db, now, x.id, x.msg, "release_interrupted", "moat", "by "+x.by+"; held again")
			s.log.Warn("quarantine: interrupted release or spam report; held again", "entry", x.id, "by", x.by)
		}
	}
	return nil
}

// Run expires old mail every ExpiryInterval and sends digests every
// DigestInterval until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	exp := time.NewTicker(s.cfg.ExpiryInterval)
	defer exp.Stop()
	var digest <-chan time.Time
	if s.cfg.DigestInterval > 0 && s.cfg.BaseURL != "" && s.enq != nil {
		t := time.NewTicker(s.cfg.DigestInterval)
		defer t.Stop()
		digest = t.C
	}
	if n, err := s.Expire(ctx); err != nil {
		s.log.Error("quarantine expiry", "err", err)
	} else if n > 0 {
		s.log.Info("quarantine expiry", "expired", n)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-exp.C:
			if n, err := s.Expire(ctx); err != nil {
				s.log.Error("quarantine expiry", "err", err)
			} else if n > 0 {
				s.log.Info("quarantine expiry", "expired", n)
			}
		case <-digest:
			if n, err := s.SendDigests(ctx); err != nil {
				s.log.Error("quarantine digests", "err", err, "sent", n)
			} else if n > 0 {
				s.log.Info("quarantine digests", "sent", n)
			}
		}
	}
}
