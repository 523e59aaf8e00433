// Package api is Moat's multi-tenant admin JSON API, mounted at /api/v1/.
// It manages customer domains (backends, TLS, recipient verification,
// policy overrides), recipient tables, the delivery queue and API tokens,
// and answers message tracking and statistics queries.
//
// Every request carries "Authorization: Bearer <token>". A token is bound
// to one role: "site" (everything), "partner:<name>" (the domains whose
// partner is <name>) or "domain:<name>" (that domain's recipients, policy,
// queue and tracking). Objects outside a token's scope answer 404, as if
// they did not exist; operations a role may never perform answer 403.
// Every state change is written to the audit log.
//
// The API touches only the Store, the queue's control interface and the
// tracking database, so it can be moved to a separate, less-privileged
// process later. Changes reach the SMTP path through its domain cache (5 s
// TTL): no restart or reload is needed.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/tracking"
)

// Prefix is the path under which the API is served. The handler expects
// the full path (mount it with mux.Handle(api.Prefix, h), no StripPrefix).
const Prefix = "/api/v1/"

// Config is the api section of the configuration file.
type Config struct {
	// MaxBodyBytes is the largest request body accepted (413 above).
	// Default 8 MiB (a bulk recipient list of ~100k addresses).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// AuthFailuresPerMinute is how many failed authentications one client
	// address (an IPv6 /64 counts as one) may make per minute before it is
	// answered 429 until the rate drops. Default 10.
	AuthFailuresPerMinute int `yaml:"auth_failures_per_minute"`
	// AuthFailureBurst is how many failures are allowed at once before the
	// rate applies. Default 10.
	AuthFailureBurst int `yaml:"auth_failure_burst"`
	// DefaultPageSize is the number of items a list returns without
	// ?limit=. Default 100.
	DefaultPageSize int `yaml:"default_page_size"`
	// MaxPageSize is the largest ?limit= accepted. Default 1000.
	MaxPageSize int `yaml:"max_page_size"`
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		MaxBodyBytes:          8 << 20,
		AuthFailuresPerMinute: 10,
		AuthFailureBurst:      10,
		DefaultPageSize:       100,
		MaxPageSize:           1000,
	}
}

// Validate checks the settings; errors name the key.
func (c *Config) Validate() error {
	switch {
	case c.MaxBodyBytes < 1024 || c.MaxBodyBytes > 1<<30:
		return errors.New("max_body_bytes: must be 1024-1073741824")
	case c.AuthFailuresPerMinute < 1 || c.AuthFailuresPerMinute > 10000:
		return errors.New("auth_failures_per_minute: must be 1-10000")
	case c.AuthFailureBurst < 1 || c.AuthFailureBurst > 10000:
		return errors.New("auth_failure_burst: must be 1-10000")
	case c.MaxPageSize < 1 || c.MaxPageSize > 100000:
		return errors.New("max_page_size: must be 1-100000")
	case c.DefaultPageSize < 1 || c.DefaultPageSize > c.MaxPageSize:
		return errors.New("default_page_size: must be 1-max_page_size")
	}
	return nil
}

// Deps are the API's collaborators. Store is required; without Queue the
// queue endpoints answer 503, without Tracker the tracking and statistics
// endpoints do.
type Deps struct {
	Store   store.Store
	Queue   QueueControl
	Tracker *tracking.Tracker
	// SitePolicy is the site policy domain overrides are applied to when
	// they are validated. Default policy.Default().
	SitePolicy *policy.Policy
	// Settings keeps people's own spam thresholds; without it their
	// endpoints answer 503.
	Settings   UserSettings
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// API is the admin API's http.Handler.
type API struct {
	cfg  Config
	deps Deps
	st   store.Store
	log  *slog.Logger
	mux  *http.ServeMux
	lim  *limiter
	m    *metrics
	now  func() time.Time
}

// New creates the API's tables (tokens, audit log) if needed and returns
// the handler.
func New(cfg Config, deps Deps) (*API, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if deps.Store == nil {
		return nil, errors.New("api: Deps.Store is required")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.SitePolicy == nil {
		deps.SitePolicy = policy.Default()
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Migrate(ctx, deps.Store); err != nil {
		return nil, err
	}
	a := &API{cfg: cfg, deps: deps, st: deps.Store, log: deps.Log, m: m, now: time.Now,
		lim: newLimiter(float64(cfg.AuthFailuresPerMinute)/60, float64(cfg.AuthFailureBurst))}
	a.routes()
	return a, nil
}

// handlerFunc is an authenticated handler.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal)

type methods map[string]handlerFunc

func (a *API) handle(pattern string, ms methods) {
	allow := make([]string, 0, len(ms))
	for m := range ms {
		allow = append(allow, m)
	}
	slices.Sort(allow)
	allowHdr := strings.Join(allow, ", ")
	a.mux.HandleFunc(Prefix+pattern, func(w http.ResponseWriter, r *http.Request) {
		h, ok := ms[r.Method]
		if !ok {
			w.Header().Set("Allow", allowHdr)
			writeError(w, http.StatusMethodNotAllowed, "method %s not allowed; allowed: %s", r.Method, allowHdr)
			return
		}
		p := principalFrom(r.Context())
		h(w, r, p)
	})
}

func (a *API) routes() {
	a.mux = http.NewServeMux()
	a.handle("tokens", methods{"GET": a.listTokens, "POST": a.createToken})
	a.handle("tokens/{id}", methods{"DELETE": a.deleteToken})
	a.handle("domains", methods{"GET": a.listDomains, "POST": a.createDomain})
	a.handle("domains/{name}", methods{"GET": a.getDomain, "PUT": a.putDomain, "DELETE": a.deleteDomain})
	a.handle("domains/{name}/policy", methods{"GET": a.getPolicy, "PUT": a.putPolicy, "DELETE": a.deletePolicy})
	a.handle("domains/{name}/recipients", methods{"GET": a.listRecipients, "POST": a.addRecipient, "PUT": a.replaceRecipients})
	a.handle("domains/{name}/recipients/{local}", methods{"GET": a.getRecipient, "DELETE": a.deleteRecipient})
	a.handle("domains/{name}/recipients/{local}/thresholds", methods{"GET": a.getThresholds, "PUT": a.putThresholds, "DELETE": a.deleteThresholds})
	a.handle("queue", methods{"GET": a.listQueue})
	a.handle("queue/retry", methods{"POST": a.retryDomain})
	a.handle("queue/{id}", methods{"GET": a.showQueued, "DELETE": a.deleteQueued})
	a.handle("queue/{id}/retry", methods{"POST": a.retryQueued})
	a.handle("queue/{id}/hold", methods{"POST": a.holdQueued})
	a.handle("queue/{id}/release", methods{"POST": a.releaseQueued})
	a.handle("messages", methods{"GET": a.searchMessages})
	a.handle("messages/{id}", methods{"GET": a.getMessage})
	a.handle("stats", methods{"GET": a.stats})
	a.handle("audit-log", methods{"GET": a.auditLog})
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: %s", r.URL.Path)
	})
}

// ServeHTTP authenticates the request and dispatches it.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			a.log.Error("api: panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
			if sw.status == 0 {
				writeError(sw, http.StatusInternalServerError, "internal error")
			}
		}
		a.m.requests.WithLabelValues(strconv.Itoa(sw.code())).Inc()
	}()
	w = sw
	ip := clientKey(r.RemoteAddr)
	if wait, ok := a.lim.allowed(ip, a.now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		writeError(w, http.StatusTooManyRequests, "too many failed authentications from your address; retry later")
		return
	}
	tok, ok := bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="moat"`)
		writeError(w, http.StatusUnauthorized, "missing bearer token (Authorization: Bearer <token>)")
		return
	}
	p, err := a.authenticate(r.Context(), tok)
	if err != nil {
		if errors.Is(err, errBadToken) {
			a.lim.fail(ip, a.now())
			a.m.authFailures.Inc()
			a.log.Warn("api: authentication failed", "ip", ip)
			w.Header().Set("WWW-Authenticate", `Bearer realm="moat", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid token")
			return
		}
		a.internal(w, r, err)
		return
	}
	p.ip = hostOnly(r.RemoteAddr)
	a.mux.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), p)))
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) code() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func hostOnly(remote string) string {
	h, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return h
}

// clientKey is the rate-limiting key: the address, or its /64 for IPv6.
func clientKey(remote string) string {
	ip, err := netip.ParseAddr(hostOnly(remote))
	if err != nil {
		return remote
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// --- responses ---

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if status == http.StatusNoContent {
		return
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, errorBody{Error: fmt.Sprintf(format, args...)})
}

// internal answers 500 with a generic text and logs the real error.
func (a *API) internal(w http.ResponseWriter, r *http.Request, err error) {
	a.log.Error("api: internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}

// httpError is an error with an HTTP status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// fail answers err: an *httpError with its status, anything else 500.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if errors.As(err, &he) {
		writeError(w, he.status, "%s", he.msg)
		return
	}
	a.internal(w, r, err)
}

// --- request bodies ---

// readJSON checks the media type, limits the body and decodes it strictly
// into v.
func (a *API) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return &httpError{status: http.StatusUnsupportedMediaType, msg: "Content-Type must be application/json"}
	}
	body := http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes)
	err = decodeStrict(body, v)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &httpError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
	}
	return err
}

// bindJSON reads the body into v (see readJSON); on failure it writes the
// error response and returns false.
func (a *API) bindJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := a.readJSON(w, r, v); err != nil {
		a.fail(w, r, err)
		return false
	}
	return true
}

// decodeStrict decodes exactly one JSON value into v, rejecting unknown
// fields and trailing data, with errors that name the field.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return badRequest("request body has data after the JSON value")
	}
	return nil
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return err
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty; a JSON value is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("invalid JSON: unexpected end of input")
	case errors.As(err, &se):
		return badRequest("invalid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.As(err, &te):
		field := jsonField(te.Field)
		if field == "" {
			field = "request body"
		} else {
			field += ":"
		}
		kind := te.Type.Kind().String()
		if num, ok := strings.CutPrefix(te.Value, "number "); ok {
			// A number that does not fit: a fraction or a too large value
			// for an integer field, or beyond float64 (1e400).
			if strings.HasPrefix(kind, "float") {
				return badRequest("%s %s is out of range", field, num)
			}
			return badRequest("%s must be a whole number in range, not %s", field, num)
		}
		return badRequest("%s must be %s, not %s", field, jsonKind(kind), te.Value)
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, `json: unknown field "`); ok {
		return badRequest("%s: unknown field", strings.TrimSuffix(name, `"`))
	}
	var he *httpError
	if errors.As(err, &he) {
		return err
	}
	return badRequest("invalid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

// jsonField is the JSON path of a decoding error's field without the Go
// names of embedded structs ("PolicyJSON.tag_score" is "tag_score"): the
// API's JSON keys are all lower case.
func jsonField(f string) string {
	parts := strings.Split(f, ".")
	parts = slices.DeleteFunc(parts, func(p string) bool { return p != "" && p[0] >= 'A' && p[0] <= 'Z' })
	return strings.Join(parts, ".")
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64", "int32", "uint", "uint64", "float64", "float32":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return k
}

// --- query parameters ---

// page reads ?limit= (and the cursor parameter named cursor).
func (a *API) limit(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return a.cfg.DefaultPageSize, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > a.cfg.MaxPageSize {
		return 0, badRequest("limit: must be 1-%d", a.cfg.MaxPageSize)
	}
	return n, nil
}

// page reads ?limit= and ?offset=.
func (a *API) page(r *http.Request) (limit, off int, err error) {
	if limit, err = a.limit(r); err != nil {
		return 0, 0, err
	}
	if off, err = offset(r); err != nil {
		return 0, 0, err
	}
	return limit, off, nil
}

func offset(r *http.Request) (int, error) {
	s := r.URL.Query().Get("offset")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1e7 {
		return 0, badRequest("offset: must be a number >= 0")
	}
	return n, nil
}

// parseTime accepts RFC 3339 ("2025-01-02T10:14:00Z") or a Go duration
// meaning that long ago ("24h", "90m").
func parseTime(name, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, badRequest("%s: %q is neither an RFC 3339 time nor a duration like 24h", name, s)
}
