// Package users holds the accounts of the quarantine web UI: site admins,
// partner admins, domain admins and end users, their password hashes
// (argon2id), what each may see (Scope) and the server-side login sessions.
//
// Everything lives in the embedded SQL database handed in by the caller;
// Migrate creates the tables.
package users

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/store/sqlstore"
)

// Role is what kind of account a user is.
type Role string

const (
	// SiteAdmin sees and acts on everything.
	SiteAdmin Role = "site_admin"
	// PartnerAdmin sees the domains of its partner (a reseller).
	PartnerAdmin Role = "partner_admin"
	// DomainAdmin sees the domains listed on the account.
	DomainAdmin Role = "domain_admin"
	// EndUser sees only mail held for the addresses listed on the account.
	EndUser Role = "user"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case SiteAdmin, PartnerAdmin, DomainAdmin, EndUser:
		return true
	}
	return false
}

// Errors returned by the store.
var (
	ErrNotFound       = errors.New("users: not found")
	ErrBadCredentials = errors.New("users: bad credentials")
	ErrExists         = errors.New("users: already exists")
)

// User is one account.
type User struct {
	ID        int64
	Name      string // login name, stored lower-case
	Role      Role
	Partner   string   // PartnerAdmin: the partner whose domains it manages
	Domains   []string // DomainAdmin: the domains it manages
	Addresses []string // EndUser: the addresses whose mail it may see (one or more)
	Disabled  bool
	Created   time.Time
}

// Store keeps accounts and sessions in SQL.
type Store struct {
	db  *sql.DB
	now func() time.Time
	q   queries
}

// queries are the statements of the Store, rebound once for the driver.
type queries struct {
	countName, insertUser, delScopes, insScopeDomain, insScopeAddr  string
	updateUser, delSessionsOf, setPassword, delUser, scopesOf       string
	byName, byID, listNames, delPartner, insPartner, partnerDomains string
	insSession, delExpired, session, delSession                     string
}

const userCols = `id, name, role, partner, disabled, created`

func newQueries(driver string) queries {
	r := func(q string) string { return sqlstore.Rebind(driver, q) }
	return queries{
		countName:      r(`SELECT COUNT(*) FROM users WHERE name=?`),
		insertUser:     r(`INSERT INTO users(name, role, partner, pw_hash, disabled, created) VALUES (?,?,?,?,?,?) RETURNING id`),
		delScopes:      r(`DELETE FROM user_scopes WHERE user_id=?`),
		insScopeDomain: r(`INSERT INTO user_scopes(user_id, kind, value) VALUES (?, 'domain', ?)`),
		insScopeAddr:   r(`INSERT INTO user_scopes(user_id, kind, value) VALUES (?, 'address', ?)`),
		updateUser:     r(`UPDATE users SET role=?, partner=?, disabled=? WHERE id=?`),
		delSessionsOf:  r(`DELETE FROM web_sessions WHERE user_id=?`),
		setPassword:    r(`UPDATE users SET pw_hash=? WHERE id=?`),
		delUser:        r(`DELETE FROM users WHERE id=?`),
		scopesOf:       r(`SELECT kind, value FROM user_scopes WHERE user_id=? ORDER BY kind, value`),
		byName:         r(`SELECT ` + userCols + `, pw_hash FROM users WHERE name=?`),
		byID:           r(`SELECT ` + userCols + `, pw_hash FROM users WHERE id=?`),
		listNames:      `SELECT name FROM users ORDER BY name`,
		delPartner:     r(`DELETE FROM partner_domains WHERE partner=?`),
		insPartner:     r(`INSERT INTO partner_domains(partner, domain) VALUES (?,?)`),
		partnerDomains: r(`SELECT domain FROM partner_domains WHERE partner=? ORDER BY domain`),
		insSession:     r(`INSERT INTO web_sessions(id_hash, user_id, csrf, created, expires) VALUES (?,?,?,?,?)`),
		delExpired:     r(`DELETE FROM web_sessions WHERE expires < ?`),
		session:        r(`SELECT user_id, csrf, expires FROM web_sessions WHERE id_hash=?`),
		delSession:     r(`DELETE FROM web_sessions WHERE id_hash=?`),
	}
}

// New returns a Store on an SQLite db; call Migrate first.
func New(db *sql.DB) *Store { return NewDriver(db, "sqlite") }

// NewDriver returns a Store on db for driver ("sqlite" or "postgres", as
// sqlstore.DB.Driver reports); call MigrateDriver first.
func NewDriver(db *sql.DB, driver string) *Store {
	return &Store{db: db, now: time.Now, q: newQueries(driver)}
}

// b2i is how booleans are stored: INTEGER 0/1 on both drivers.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// SetClock replaces the clock (tests).
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// sqliteSchema is the schema on SQLite (unchanged since the first release).
var sqliteSchema = []string{
	`CREATE TABLE IF NOT EXISTS users (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		name TEXT NOT NULL UNIQUE,
		role TEXT NOT NULL,
		partner TEXT NOT NULL DEFAULT '',
		pw_hash TEXT NOT NULL,
		disabled INTEGER NOT NULL DEFAULT 0,
		created INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS user_scopes (
		user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
		kind TEXT NOT NULL,
		value TEXT NOT NULL,
		PRIMARY KEY (user_id, kind, value)
	)`,
	`CREATE INDEX IF NOT EXISTS user_scopes_value ON user_scopes(kind, value)`,
	`CREATE TABLE IF NOT EXISTS partner_domains (
		partner TEXT NOT NULL,
		domain TEXT NOT NULL,
		PRIMARY KEY (partner, domain)
	)`,
	`CREATE TABLE IF NOT EXISTS web_sessions (
		id_hash TEXT PRIMARY KEY,
		user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
		csrf TEXT NOT NULL,
		created INTEGER NOT NULL,
		expires INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS web_sessions_expires ON web_sessions(expires)`,
}

// postgresSchema is the same schema on PostgreSQL: identity key, 64-bit
// times and IDs. Booleans stay INTEGER 0/1 as on SQLite.
var postgresSchema = []string{
	`CREATE TABLE IF NOT EXISTS users (
		id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		role TEXT NOT NULL,
		partner TEXT NOT NULL DEFAULT '',
		pw_hash TEXT NOT NULL,
		disabled INTEGER NOT NULL DEFAULT 0,
		created BIGINT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS user_scopes (
		user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
		kind TEXT NOT NULL,
		value TEXT NOT NULL,
		PRIMARY KEY (user_id, kind, value)
	)`,
	`CREATE INDEX IF NOT EXISTS user_scopes_value ON user_scopes(kind, value)`,
	`CREATE TABLE IF NOT EXISTS partner_domains (
		partner TEXT NOT NULL,
		domain TEXT NOT NULL,
		PRIMARY KEY (partner, domain)
	)`,
	`CREATE TABLE IF NOT EXISTS web_sessions (
		id_hash TEXT PRIMARY KEY,
		user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
		csrf TEXT NOT NULL,
		created BIGINT NOT NULL,
		expires BIGINT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS web_sessions_expires ON web_sessions(expires)`,
}

// Migrate creates the tables on an SQLite db if they do not exist.
func Migrate(ctx context.Context, db *sql.DB) error { return MigrateDriver(ctx, db, "sqlite") }

// MigrateDriver creates the tables for driver ("sqlite" or "postgres") if
// they do not exist.
func MigrateDriver(ctx context.Context, db *sql.DB, driver string) error {
	schema := sqliteSchema
	switch driver {
	case "", "sqlite":
	case "postgres":
		schema = postgresSchema
	default:
		return fmt.Errorf("users: unknown driver %q", driver)
	}
	for _, q := range schema {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("users: migrate: %w", err)
		}
	}
	return nil
}

func normList(in []string) []string {
	var out []string
	for _, s := range in {
		s = strings.ToLower(strings.TrimSpace(s))
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Create adds a user with the given password. It fills in u.ID.
func (s *Store) Create(ctx context.Context, u *User, password string) error {
	u.Name = strings.ToLower(strings.TrimSpace(u.Name))
	if u.Name == "" {
		return errors.New("users: empty name")
	}
	if !u.Role.Valid() {
		return fmt.Errorf("users: unknown role %q", u.Role)
	}
	if u.Role == PartnerAdmin && u.Partner == "" {
		return errors.New("users: partner admin needs a partner")
	}
	if len(password) < 8 {
		return errors.New("users: password must have at least 8 characters")
	}
	h, err := HashPassword(password)
	if err != nil {
		return err
	}
	return s.CreateWithHash(ctx, u, h)
}

// CreateWithHash adds a user whose password hash (from HashPassword) is
// already known: imports, and tests that avoid hashing per user.
func (s *Store) CreateWithHash(ctx context.Context, u *User, h string) error {
	u.Name = strings.ToLower(strings.TrimSpace(u.Name))
	if u.Name == "" {
		return errors.New("users: empty name")
	}
	if !u.Role.Valid() {
		return fmt.Errorf("users: unknown role %q", u.Role)
	}
	if _, _, _, _, _, err := parseHash(h); err != nil {
		return err
	}
	u.Domains, u.Addresses = normList(u.Domains), normList(u.Addresses)
	u.Created = s.now().UTC().Truncate(time.Second)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var exists int
	if err := tx.QueryRowContext(ctx, s.q.countName, u.Name).Scan(&exists); err != nil {
		return err
	}
	if exists > 0 {
		return ErrExists
	}
	if err := tx.QueryRowContext(ctx, s.q.insertUser,
		u.Name, string(u.Role), u.Partner, h, b2i(u.Disabled), u.Created.Unix()).Scan(&u.ID); err != nil {
		return err
	}
	if err := s.writeScopes(ctx, tx, u); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *Store) writeScopes(ctx context.Context, tx *sql.Tx, u *User) error {
	if _, err := tx.ExecContext(ctx, s.q.delScopes, u.ID); err != nil {
		return err
	}
	for _, d := range u.Domains {
		if _, err := tx.ExecContext(ctx, s.q.insScopeDomain, u.ID, d); err != nil {
			return err
		}
	}
	for _, a := range u.Addresses {
		if _, err := tx.ExecContext(ctx, s.q.insScopeAddr, u.ID, a); err != nil {
			return err
		}
	}
	return nil
}

// Update rewrites role, partner, domains, addresses and the disabled flag
// of an existing user (matched by ID).
func (s *Store) Update(ctx context.Context, u *User) error {
	if !u.Role.Valid() {
		return fmt.Errorf("users: unknown role %q", u.Role)
	}
	u.Domains, u.Addresses = normList(u.Domains), normList(u.Addresses)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q.updateUser, string(u.Role), u.Partner, b2i(u.Disabled), u.ID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	if err := s.writeScopes(ctx, tx, u); err != nil {
		return err
	}
	if u.Disabled {
		if _, err := tx.ExecContext(ctx, s.q.delSessionsOf, u.ID); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// SetPassword replaces a user's password and ends all its sessions.
func (s *Store) SetPassword(ctx context.Context, name, password string) error {
	if len(password) < 8 {
		return errors.New("users: password must have at least 8 characters")
	}
	h, err := HashPassword(password)
	if err != nil {
		return err
	}
	u, err := s.ByName(ctx, name)
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, s.q.setPassword, h, u.ID); err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.q.delSessionsOf, u.ID)
	return err
}

// Delete removes a user, its scopes and its sessions.
func (s *Store) Delete(ctx context.Context, name string) error {
	u, err := s.ByName(ctx, name)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, q := range []string{s.q.delSessionsOf, s.q.delScopes, s.q.delUser} {
		if _, err := tx.ExecContext(ctx, q, u.ID); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *Store) scanUser(ctx context.Context, row *sql.Row) (*User, string, error) {
	var u User
	var role string
	var created int64
	var hash string
	if err := row.Scan(&u.ID, &u.Name, &role, &u.Partner, &u.Disabled, &created, &hash); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, "", ErrNotFound
		}
		return nil, "", err
	}
	u.Role = Role(role)
	u.Created = time.Unix(created, 0).UTC()
	if err := s.loadScopes(ctx, &u); err != nil {
		return nil, "", err
	}
	return &u, hash, nil
}

func (s *Store) loadScopes(ctx context.Context, u *User) error {
	rows, err := s.db.QueryContext(ctx, s.q.scopesOf, u.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		switch k {
		case "domain":
			u.Domains = append(u.Domains, v)
		case "address":
			u.Addresses = append(u.Addresses, v)
		}
	}
	return rows.Err()
}

// ByName returns the user with that login name.
func (s *Store) ByName(ctx context.Context, name string) (*User, error) {
	u, _, err := s.scanUser(ctx, s.db.QueryRowContext(ctx, s.q.byName, strings.ToLower(strings.TrimSpace(name))))
	return u, err
}

// Get returns the user with that ID.
func (s *Store) Get(ctx context.Context, id int64) (*User, error) {
	u, _, err := s.scanUser(ctx, s.db.QueryRowContext(ctx, s.q.byID, id))
	return u, err
}

// List returns every user, by name.
func (s *Store) List(ctx context.Context) ([]*User, error) {
	rows, err := s.db.QueryContext(ctx, s.q.listNames)
	if err != nil {
		return nil, err
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []*User
	for _, n := range names {
		u, err := s.ByName(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// dummyHash is verified against when the user does not exist, so a login
// for an unknown name costs as much as one for a known name. It is made
// on first use, not at start: argon2 takes 19 MiB and ~0.1 s, which every
// moat command (moat learn, moat classify) would pay.
var dummyHash = sync.OnceValue(func() string {
	h, _ := HashPassword("moat-dummy-password")
	return h
})

// Authenticate checks a name and password. Unknown users, wrong passwords
// and disabled accounts all give ErrBadCredentials.
func (s *Store) Authenticate(ctx context.Context, name, password string) (*User, error) {
	u, hash, err := s.scanUser(ctx, s.db.QueryRowContext(ctx, s.q.byName, strings.ToLower(strings.TrimSpace(name))))
	if errors.Is(err, ErrNotFound) {
		VerifyPassword(dummyHash(), password)
		return nil, ErrBadCredentials
	}
	if err != nil {
		return nil, err
	}
	if !VerifyPassword(hash, password) || u.Disabled {
		return nil, ErrBadCredentials
	}
	return u, nil
}

// SetPartnerDomains replaces the set of domains a partner manages.
func (s *Store) SetPartnerDomains(ctx context.Context, partner string, domains []string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.q.delPartner, partner); err != nil {
		return err
	}
	for _, d := range normList(domains) {
		if _, err := tx.ExecContext(ctx, s.q.insPartner, partner, d); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// PartnerDomains returns the domains of a partner.
func (s *Store) PartnerDomains(ctx context.Context, partner string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.q.partnerDomains, partner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Scope is what one user may see: everything, whole domains, or single
// addresses.
type Scope struct {
	All       bool
	Domains   []string
	Addresses []string
}

// Scope resolves what u may see (a partner admin's partner domains are
// read now, so changes apply on the next request).
func (s *Store) Scope(ctx context.Context, u *User) (Scope, error) {
	switch u.Role {
	case SiteAdmin:
		return Scope{All: true}, nil
	case PartnerAdmin:
		d, err := s.PartnerDomains(ctx, u.Partner)
		return Scope{Domains: d}, err
	case DomainAdmin:
		return Scope{Domains: u.Domains}, nil
	case EndUser:
		return Scope{Addresses: u.Addresses}, nil
	}
	return Scope{}, nil
}

// Allows reports whether mail for rcpt in domain is visible in the scope.
func (sc Scope) Allows(domain, rcpt string) bool {
	if sc.All {
		return true
	}
	return slices.Contains(sc.Domains, strings.ToLower(domain)) || slices.Contains(sc.Addresses, strings.ToLower(rcpt))
}

// Session is one logged-in browser.
type Session struct {
	User    *User
	CSRF    string // per-session token every state-changing form carries
	Expires time.Time
}

func randToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func hashToken(t string) string {
	h := sha256.Sum256([]byte(t))
	return hex.EncodeToString(h[:])
}

// CreateSession starts a session for u lasting ttl and returns the opaque
// token for the cookie. Only a hash of the token is stored.
func (s *Store) CreateSession(ctx context.Context, u *User, ttl time.Duration) (string, *Session, error) {
	tok := randToken()
	now := s.now()
	sess := &Session{User: u, CSRF: randToken(), Expires: now.Add(ttl)}
	_, err := s.db.ExecContext(ctx, s.q.insSession,
		hashToken(tok), u.ID, sess.CSRF, now.Unix(), sess.Expires.Unix())
	if err != nil {
		return "", nil, err
	}
	// Opportunistic cleanup of expired sessions.
	s.db.ExecContext(ctx, s.q.delExpired, now.Unix())
	return tok, sess, nil
}

// Session returns the live session for a cookie token, or ErrNotFound.
func (s *Store) Session(ctx context.Context, tok string) (*Session, error) {
	if tok == "" || len(tok) > 128 {
		return nil, ErrNotFound
	}
	var uid, exp int64
	var csrf string
	err := s.db.QueryRowContext(ctx, s.q.session, hashToken(tok)).Scan(&uid, &csrf, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if s.now().Unix() >= exp {
		s.db.ExecContext(ctx, s.q.delSession, hashToken(tok))
		return nil, ErrNotFound
	}
	u, err := s.Get(ctx, uid)
	if err != nil {
		return nil, err
	}
	if u.Disabled {
		return nil, ErrNotFound
	}
	return &Session{User: u, CSRF: csrf, Expires: time.Unix(exp, 0)}, nil
}

// DeleteSession ends a session (logout).
func (s *Store) DeleteSession(ctx context.Context, tok string) error {
	_, err := s.db.ExecContext(ctx, s.q.delSession, hashToken(tok))
	return err
}
