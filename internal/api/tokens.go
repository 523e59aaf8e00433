package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/sqlstore"
)

// Roles.
const (
	RoleSite    = "site"
	rolePartner = "partner"
	roleDomain  = "domain"
)

// principal is the authenticated caller.
type principal struct {
	tokenID string
	label   string
	role    string // as stored: site, partner:<name>, domain:<name>
	kind    string // site, partner, domain
	name    string // partner or domain name
	ip      string
}

type ctxKey struct{}

func withPrincipal(ctx context.Context, p *principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

func principalFrom(ctx context.Context) *principal {
	p, _ := ctx.Value(ctxKey{}).(*principal)
	return p
}

var (
	domainRE  = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	partnerRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
)

// ParseRole validates a role string and returns its kind and name.
func ParseRole(role string) (kind, name string, err error) {
	if role == RoleSite {
		return RoleSite, "", nil
	}
	kind, name, ok := strings.Cut(role, ":")
	switch {
	case ok && kind == rolePartner && partnerRE.MatchString(name):
		return kind, name, nil
	case ok && kind == rolePartner:
		return "", "", fmt.Errorf("partner name %q: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)", name)
	case ok && kind == roleDomain && domainRE.MatchString(name):
		return kind, name, nil
	case ok && kind == roleDomain:
		return "", "", fmt.Errorf("%q is not a valid domain name (lower-case, no trailing dot)", name)
	}
	return "", "", fmt.Errorf("%q is not one of site, partner:<name>, domain:<name>", role)
}

// Migrate creates the API's own tables (tokens, audit log) if needed.
func Migrate(ctx context.Context, st store.Store) error {
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS api_tokens (
			id      TEXT PRIMARY KEY,
			hash    TEXT NOT NULL,
			role    TEXT NOT NULL,
			label   TEXT NOT NULL DEFAULT '',
			created BIGINT NOT NULL
		)`,
		`CREATE TABLE IF NOT EXISTS api_audit (
			ts       BIGINT NOT NULL,
			token_id TEXT NOT NULL DEFAULT '',
			label    TEXT NOT NULL DEFAULT '',
			role     TEXT NOT NULL DEFAULT '',
			ip       TEXT NOT NULL DEFAULT '',
			action   TEXT NOT NULL,
			object   TEXT NOT NULL DEFAULT '',
			detail   TEXT NOT NULL DEFAULT ''
		)`,
		`CREATE INDEX IF NOT EXISTS api_audit_ts ON api_audit (ts)`,
	} {
		if _, err := st.DB().ExecContext(ctx, q); err != nil {
			return fmt.Errorf("api: migrate: %w", err)
		}
	}
	return nil
}

const tokenPrefix = "moat_"

var errBadToken = errors.New("invalid token")

// newToken returns a token "moat_<id>_<secret>": id is 8 random bytes in
// hex (the lookup key), secret 32 random bytes in unpadded base64url.
func newToken() (id, token string) {
	var idb [8]byte
	var sec [32]byte
	rand.Read(idb[:])
	rand.Read(sec[:])
	id = hex.EncodeToString(idb[:])
	return id, tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(sec[:])
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func validLabel(label string) error {
	if label == "" || len(label) > 100 {
		return errors.New("must be 1-100 characters")
	}
	for _, r := range label {
		if !unicode.IsPrint(r) {
			return errors.New("must be printable text")
		}
	}
	return nil
}

// TokenInfo describes a token (never its secret).
type TokenInfo struct {
	ID      string    `json:"id"`
	Role    string    `json:"role"`
	Label   string    `json:"label"`
	Created time.Time `json:"created"`
}

// createToken stores a new token and returns it; the secret is not kept.
func createToken(ctx context.Context, st store.Store, role, label string, now time.Time) (string, TokenInfo, error) {
	if _, _, err := ParseRole(role); err != nil {
		return "", TokenInfo{}, badRequest("role: %v", err)
	}
	if err := validLabel(label); err != nil {
		return "", TokenInfo{}, badRequest("label: %v", err)
	}
	id, tok := newToken()
	_, err := st.DB().ExecContext(ctx, sqlstore.Rebind(st.Driver(),
		`INSERT INTO api_tokens (id, hash, role, label, created) VALUES (?, ?, ?, ?, ?)`),
		id, hashToken(tok), role, label, now.UnixMicro())
	if err != nil {
		return "", TokenInfo{}, err
	}
	return tok, TokenInfo{ID: id, Role: role, Label: label, Created: time.UnixMicro(now.UnixMicro()).UTC()}, nil
}

// CreateToken creates an API token with role ("site", "partner:<name>",
// "domain:<name>") and a label naming its holder, and returns it. The
// token is shown only here; the store keeps its SHA-256. For the CLI and
// bootstrap: it migrates the API's tables and records the creation in the
// audit log as done by "cli".
func CreateToken(ctx context.Context, st store.Store, role, label string) (string, error) {
	if err := Migrate(ctx, st); err != nil {
		return "", err
	}
	now := time.Now()
	tok, info, err := createToken(ctx, st, role, label, now)
	if err != nil {
		return "", err
	}
	err = writeAudit(ctx, st, now, &principal{label: "cli", role: "cli"}, "token.create", info.ID, "role="+role+" label="+label)
	return tok, err
}

// CreateToken is CreateToken on the API's store.
func (a *API) CreateToken(ctx context.Context, role, label string) (string, error) {
	return CreateToken(ctx, a.st, role, label)
}

// dummyHash is compared against when the token ID is unknown, so that
// unknown and wrong tokens take the same path.
var dummyHash = hashToken("moat_dummy")

func (a *API) authenticate(ctx context.Context, tok string) (*principal, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 16 || len(tok) > 200 {
		return nil, errBadToken
	}
	var hash, role, label string
	err := a.st.DB().QueryRowContext(ctx, sqlstore.Rebind(a.st.Driver(),
		`SELECT hash, role, label FROM api_tokens WHERE id = ?`), id).Scan(&hash, &role, &label)
	if errors.Is(err, sql.ErrNoRows) {
		hash = dummyHash
	} else if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(hashToken(tok)), []byte(hash)) != 1 || errors.Is(err, sql.ErrNoRows) {
		return nil, errBadToken
	}
	kind, name, err := ParseRole(role)
	if err != nil {
		return nil, fmt.Errorf("token %s has a bad role: %w", id, err)
	}
	return &principal{tokenID: id, label: label, role: role, kind: kind, name: name}, nil
}

// --- handlers ---

func requireSite(w http.ResponseWriter, p *principal) bool {
	if p.kind != RoleSite {
		writeError(w, http.StatusForbidden, "this operation needs a site token")
		return false
	}
	return true
}

type tokenRequest struct {
	Role  string `json:"role"`
	Label string `json:"label"`
}

type tokenCreated struct {
	TokenInfo
	Token string `json:"token"`
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, p *principal) {
	if !requireSite(w, p) {
		return
	}
	var req tokenRequest
	if !a.bindJSON(w, r, &req) {
		return
	}
	tok, info, err := createToken(r.Context(), a.st, req.Role, req.Label, a.now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.audit(r, p, "token.create", info.ID, "role="+info.Role+" label="+info.Label)
	writeJSON(w, http.StatusCreated, tokenCreated{TokenInfo: info, Token: tok})
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, p *principal) {
	if !requireSite(w, p) {
		return
	}
	rows, err := a.st.DB().QueryContext(r.Context(), `SELECT id, role, label, created FROM api_tokens ORDER BY created, id`)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	defer rows.Close()
	items := []TokenInfo{}
	for rows.Next() {
		var t TokenInfo
		var c int64
		if err := rows.Scan(&t.ID, &t.Role, &t.Label, &c); err != nil {
			a.internal(w, r, err)
			return
		}
		t.Created = time.UnixMicro(c).UTC()
		items = append(items, t)
	}
	if err := rows.Err(); err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list[TokenInfo]{Items: items})
}

func (a *API) deleteToken(w http.ResponseWriter, r *http.Request, p *principal) {
	if !requireSite(w, p) {
		return
	}
	id := r.PathValue("id")
	res, err := a.st.DB().ExecContext(r.Context(), sqlstore.Rebind(a.st.Driver(), `DELETE FROM api_tokens WHERE id = ?`), id)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	if n, _ := res.RowsAffected(); n == 0 {
		writeError(w, http.StatusNotFound, "token not found")
		return
	}
	a.audit(r, p, "token.delete", id, "")
	writeJSON(w, http.StatusNoContent, nil)
}

// list is the shape of every list response.
type list[T any] struct {
	Items []T `json:"items"`
	// Next is the cursor for the next page (pass it as ?cursor=), "" on
	// the last page.
	Next string `json:"next,omitempty"`
	// NextOffset is the ?offset= of the next page for offset-paged lists.
	NextOffset int `json:"next_offset,omitempty"`
}

// --- failed-authentication rate limiting ---

// limiter is a token bucket per client address, spent only by failed
// authentications.
type limiter struct {
	mu    sync.Mutex
	rate  float64 // tokens per second
	burst float64
	m     map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate, burst float64) *limiter {
	return &limiter{rate: rate, burst: burst, m: map[string]*bucket{}}
}

func (l *limiter) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(l.burst, b.tokens+d*l.rate)
	}
	b.last = now
}

// allowed reports whether key may try to authenticate, and if not, how
// long until it may.
func (l *limiter) allowed(key string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		return 0, true
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		return 0, true
	}
	return time.Duration((1 - b.tokens) / l.rate * float64(time.Second)), false
}

// fail records one failed authentication from key.
func (l *limiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if len(l.m) >= 10000 {
			l.gc(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.m[key] = b
	}
	l.refill(b, now)
	b.tokens = max(b.tokens-1, 0)
}

// gc forgets buckets that are full again; if that is not enough (a wide
// attack), it starts over rather than grow without bound.
func (l *limiter) gc(now time.Time) {
	for k, b := range l.m {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.m, k)
		}
	}
	if len(l.m) >= 100000 {
		l.m = map[string]*bucket{}
	}
}

// --- metrics ---

type metrics struct {
	requests     *prometheus.CounterVec
	authFailures prometheus.Counter
	auditErrors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moat_api_requests_total", Help: "Admin API requests by HTTP status code."}, []string{"code"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_api_auth_failures_total", Help: "Admin API requests with an invalid token."}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moat_api_audit_errors_total", Help: "State changes whose audit log entry could not be written."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.authFailures, m.auditErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("api: metrics: %w", err)
		}
	}
	return m, nil
}
