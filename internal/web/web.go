// Package web is the quarantine web UI for end users and administrators:
// server-rendered pages (html/template, embedded assets, no CDN), login
// with argon2id-hashed passwords, server-side sessions, CSRF tokens on
// every state-changing form, login rate limiting, a strict
// Content-Security-Policy, a safe message preview, the confirmation
// pages of the one-click digest links, and the spam settings page (own
// score thresholds, personal sender allow and block lists).
//
// It touches only the quarantine Store and the users Store, so it can run
// in a separate, less-privileged process later.
package web

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/users"
	"moat.dev/moat/internal/verdict"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is the web UI section of the configuration file.
type Config struct {
	// Listen is the address the web UI server listens on (used by the
	// caller that runs the http.Server), default "127.0.0.1:8080". Put a
	// TLS-terminating proxy in front, or keep it on loopback. "" turns the
	// web UI off.
	Listen string `yaml:"listen"`
	// CookieSecure marks cookies Secure (HTTPS only) and gives the session
	// cookie the __Host- prefix. Default true; set false only for plain
	// http on loopback (development, tests).
	CookieSecure bool `yaml:"cookie_secure"`
	// SessionTTL is how long a login lasts (default 12h).
	SessionTTL time.Duration `yaml:"session_ttl"`
	// LoginMaxFailures failed logins per client IP or per account within
	// LoginWindow lock further attempts out with 429 (default 5).
	LoginMaxFailures int `yaml:"login_max_failures"`
	// LoginWindow is the window of the login rate limit (default 15m).
	LoginWindow time.Duration `yaml:"login_window"`
	// PageSize is the number of messages per page (default 50, 10..500).
	PageSize int `yaml:"page_size"`
	// Title is the product name shown in the header (default "Moat").
	Title string `yaml:"title"`
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{
		Listen:           "127.0.0.1:8080",
		CookieSecure:     true,
		SessionTTL:       12 * time.Hour,
		LoginMaxFailures: 5,
		LoginWindow:      15 * time.Minute,
		PageSize:         50,
		Title:            "Moat",
	}
}

// Validate reports the first invalid key.
func (c *Config) Validate() error {
	if c.Listen != "" { // "" turns the web UI off
		if _, p, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("listen: %v", err)
		} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("listen: %q: the port must be 0-65535", c.Listen)
		}
	}
	if c.SessionTTL < time.Minute || c.SessionTTL > 30*24*time.Hour {
		return errors.New("session_ttl: must be between 1m and 720h")
	}
	if c.LoginMaxFailures < 1 {
		return errors.New("login_max_failures: must be >= 1")
	}
	if c.LoginWindow < time.Second {
		return errors.New("login_window: must be >= 1s")
	}
	if c.PageSize < 10 || c.PageSize > 500 {
		return errors.New("page_size: must be between 10 and 500")
	}
	if strings.TrimSpace(c.Title) == "" {
		return errors.New("title: must not be empty")
	}
	return nil
}

// Deps are the collaborators of the UI.
type Deps struct {
	Quarantine *quarantine.Store
	Users      *users.Store
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time // default time.Now

	// The admin console pages; each is hidden (404, no nav link) while its
	// dependency is nil, and only administrators see them, scoped to their
	// domains.

	// Audit returns the latest scheduled leakage audit: the report (nil
	// if none has run yet), when it ran, and the error of the last run.
	Audit func() (rep *audit.Report, at time.Time, err error)
	// Bypass returns the per-domain bypass statistics (messages that
	// reached a customer's backend without a valid pass mark).
	Bypass func() []milter.DomainStats
	// BypassSince is when the bypass counters started (the process start
	// for the in-memory statistics); zero if unknown.
	BypassSince time.Time
	// Tracking answers message tracking searches and statistics.
	Tracking *tracking.Tracker
}

type server struct {
	cfg     Config
	q       *quarantine.Store
	users   *users.Store
	log     *slog.Logger
	now     func() time.Time
	pages   map[string]*template.Template
	limiter *limiter

	audit       func() (*audit.Report, time.Time, error)
	bypass      func() []milter.DomainStats
	bypassSince time.Time
	tracker     *tracking.Tracker

	mLogins  *prometheus.CounterVec
	mActions *prometheus.CounterVec
}

// Content-Security-Policy of the UI pages, and of the frame that shows a
// message's HTML (no scripts, no network, sandboxed).
const (
	cspPage  = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
	cspFrame = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; sandbox"
)

// New returns the UI's HTTP handler.
func New(cfg Config, deps Deps) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Quarantine == nil || deps.Users == nil {
		return nil, errors.New("web: quarantine and users stores are required")
	}
	s := &server{cfg: cfg, q: deps.Quarantine, users: deps.Users, log: deps.Logger, now: deps.Now,
		audit: deps.Audit, bypass: deps.Bypass, bypassSince: deps.BypassSince, tracker: deps.Tracking}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.limiter = newLimiter(cfg.LoginMaxFailures, cfg.LoginWindow, s.now)
	s.mLogins = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "moat", Subsystem: "web", Name: "logins_total",
		Help: "Login attempts by result (ok, failed, limited)."}, []string{"result"})
	s.mActions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "moat", Subsystem: "web", Name: "actions_total",
		Help: "Quarantine actions taken in the UI by action and result."}, []string{"action", "result"})
	if deps.Registerer != nil {
		for _, c := range []prometheus.Collector{s.mLogins, s.mActions} {
			if err := deps.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	if err := s.parseTemplates(); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(staticFS, "static")
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static))))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/quarantine", http.StatusSeeOther) })
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.loginPost)
	mux.HandleFunc("POST /logout", s.authed(s.logout))
	mux.HandleFunc("GET /quarantine", s.authed(s.list))
	mux.HandleFunc("GET /quarantine/{id}", s.authed(s.show))
	mux.HandleFunc("GET /quarantine/{id}/body", s.authed(s.body))
	mux.HandleFunc("POST /quarantine/{id}/{action}", s.authed(s.act))
	mux.HandleFunc("POST /quarantine/bulk", s.authed(s.bulk))
	mux.HandleFunc("GET /settings", s.authed(s.settings))
	mux.HandleFunc("POST /settings/thresholds", s.authed(s.thresholdsPost))
	mux.HandleFunc("POST /settings/senders", s.authed(s.sendersPost))
	mux.HandleFunc("POST /settings/senders/remove", s.authed(s.senderRemovePost))
	s.adminRoutes(mux)
	mux.HandleFunc("GET /l/{token}", s.linkPage)
	mux.HandleFunc("POST /l/{token}", s.linkPost)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { s.notFound(w, r, nil) })
	return securityHeaders(mux), nil
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// securityHeaders sets the headers every response carries; the message
// frame replaces the CSP with its stricter one.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", cspPage)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

var funcs = template.FuncMap{
	"score": verdict.FormatScore,
	"date": func(t time.Time) string {
		return t.Local().Format("2006-01-02 15:04")
	},
	"scoreClass": func(f float64) string {
		switch {
		case f >= 15:
			return "high"
		case f >= 6:
			return "mid"
		}
		return "low"
	},
	"size": func(n int64) string {
		switch {
		case n >= 1<<20:
			return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
		case n >= 1<<10:
			return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
		}
		return fmt.Sprintf("%d B", n)
	},
	"topReasons": func(r []verdict.Symbol) []verdict.Symbol {
		out := append([]verdict.Symbol(nil), r...)
		for i := 1; i < len(out); i++ {
			for j := i; j > 0 && out[j].Score > out[j-1].Score; j-- {
				out[j], out[j-1] = out[j-1], out[j]
			}
		}
		return out[:min(len(out), 3)]
	},
	"sender": func(e *quarantine.Entry) string {
		if e.HeaderFrom != "" {
			return e.HeaderFrom
		}
		if e.From == "" {
			return "<>"
		}
		return e.From
	},
}

func (s *server) parseTemplates() error {
	s.pages = map[string]*template.Template{}
	for _, p := range []string{"login", "list", "show", "link", "message", "leakage", "tracking", "track", "stats", "settings"} {
		t, err := template.New("layout.html").Funcs(funcs).Funcs(consoleFuncs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return fmt.Errorf("web: template %s: %w", p, err)
		}
		s.pages[p] = t
	}
	return nil
}

// page is what every template gets.
type page struct {
	Title   string
	Product string
	User    *users.User
	CSRF    string
	Flash   *flash
	Data    any
	Nav     []navLink // the console's links, for administrators
	Active  string    // the current section's path ("/quarantine", "/leakage", "/settings", ...)
}

func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	p.Product = s.cfg.Title
	if sess := sessionFrom(r.Context()); sess != nil {
		p.User = sess.User
		if p.CSRF == "" {
			p.CSRF = sess.CSRF
		}
	}
	if p.Flash == nil {
		p.Flash = s.takeFlash(w, r)
	}
	if p.User != nil {
		p.Nav = s.nav(p.User)
		if p.Active == "" {
			p.Active = section(r.URL.Path)
		}
	}
	var b strings.Builder
	if err := s.pages[name].Execute(&b, p); err != nil {
		s.log.Error("web: render", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write([]byte(b.String()))
}

type messageData struct {
	Heading, Text string
	Back          string
}

func (s *server) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	s.render(w, r, status, "message", page{Title: title, Data: messageData{Heading: title, Text: text, Back: "/quarantine"}})
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request, _ error) {
	s.message(w, r, http.StatusNotFound, "Not found", "There is no such page or message, or it is not yours.")
}

func (s *server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("web: internal error", "path", r.URL.Path, "err", err)
	s.message(w, r, http.StatusInternalServerError, "Something went wrong", "The request could not be completed. Please try again later.")
}

// lookupFailed answers a failed lookup: the not-found page when err is
// notFound, the internal-error page otherwise. It reports whether err was
// an error (and so the response is written).
func (s *server) lookupFailed(w http.ResponseWriter, r *http.Request, err, notFound error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, notFound):
		s.notFound(w, r, err)
	default:
		s.internal(w, r, err)
	}
	return true
}

// safeNext returns next if it is a local absolute path ("/..."), and the
// quarantine list otherwise: no scheme, no host, no "//" or "/\" tricks.
func safeNext(next string) string {
	const def = "/quarantine"
	if next == "" || len(next) > 1024 || next[0] != '/' || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n\t\x00") {
		return def
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return def
	}
	return next
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type ctxKey struct{}

func sessionFrom(ctx context.Context) *users.Session {
	s, _ := ctx.Value(ctxKey{}).(*users.Session)
	return s
}
