package web

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/users"
)

func (s *server) cookieName(base string) string {
	if s.cfg.CookieSecure {
		return "__Host-" + base // Secure, Path=/, no Domain: cannot be set by a sibling host
	}
	return base
}

func (s *server) setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName(name), Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: s.cfg.CookieSecure, SameSite: http.SameSiteStrictMode,
	})
}

func (s *server) cookie(r *http.Request, name string) string {
	c, err := r.Cookie(s.cookieName(name))
	if err != nil {
		return ""
	}
	return c.Value
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tokensEqual(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// authed loads the session; without one, GETs go to the login page and
// everything else gets 401. POSTs must carry the session's CSRF token.
func (s *server) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.users.Session(r.Context(), s.cookie(r, "moat_session"))
		if err != nil && !errors.Is(err, users.ErrNotFound) {
			s.internal(w, r, err)
			return
		}
		if sess == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "login required", http.StatusUnauthorized)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, sess))
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			if !tokensEqual(r.PostFormValue("csrf"), sess.CSRF) {
				s.log.Warn("web: CSRF token mismatch", "user", sess.User.Name, "path", r.URL.Path, "ip", clientIP(r))
				s.message(w, r, http.StatusForbidden, "Request refused", "The form has expired or did not come from this site. Go back, reload the page and try again.")
				return
			}
		}
		h(w, r)
	}
}

// preCSRF is the double-submit token of pages without a session (login,
// digest links): a random cookie echoed in a hidden field.
func (s *server) preCSRF(w http.ResponseWriter, r *http.Request) string {
	tok := s.cookie(r, "moat_csrf")
	if len(tok) != 64 {
		tok = randHex(32)
		s.setCookie(w, "moat_csrf", tok, 0)
	}
	return tok
}

func (s *server) checkPreCSRF(r *http.Request) bool {
	return tokensEqual(r.PostFormValue("csrf"), s.cookie(r, "moat_csrf"))
}

type loginData struct {
	Name, Next, Error string
}

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) {
	if sess, _ := s.users.Session(r.Context(), s.cookie(r, "moat_session")); sess != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", page{Title: "Sign in", CSRF: s.preCSRF(w, r),
		Data: loginData{Next: safeNext(r.URL.Query().Get("next"))}})
}

func (s *server) loginPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	name := strings.ToLower(strings.TrimSpace(r.PostFormValue("name")))
	next := safeNext(r.PostFormValue("next"))
	ip := clientIP(r)
	fail := func(status int, msg string) {
		s.render(w, r, status, "login", page{Title: "Sign in", CSRF: s.preCSRF(w, r), Data: loginData{Name: name, Next: next, Error: msg}})
	}
	if !s.checkPreCSRF(r) {
		s.message(w, r, http.StatusForbidden, "Request refused", "The sign-in form has expired. Reload the page and try again.")
		return
	}
	if wait := s.limiter.blocked("ip:"+ip, "user:"+name); wait > 0 {
		s.mLogins.WithLabelValues("limited").Inc()
		s.log.Warn("web: login rate limited", "ip", ip, "user", name)
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		fail(http.StatusTooManyRequests, "Too many failed sign-in attempts. Please wait a few minutes and try again.")
		return
	}
	u, err := s.users.Authenticate(r.Context(), name, r.PostFormValue("password"))
	if errors.Is(err, users.ErrBadCredentials) {
		s.limiter.fail("ip:"+ip, "user:"+name)
		s.mLogins.WithLabelValues("failed").Inc()
		s.log.Info("web: login failed", "ip", ip, "user", name)
		fail(http.StatusUnauthorized, "The name or password is not correct.")
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	s.limiter.reset("user:" + name)
	tok, _, err := s.users.CreateSession(r.Context(), u, s.cfg.SessionTTL)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	s.setCookie(w, "moat_session", tok, int(s.cfg.SessionTTL.Seconds()))
	s.mLogins.WithLabelValues("ok").Inc()
	s.log.Info("web: login", "ip", ip, "user", u.Name, "role", u.Role)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	s.users.DeleteSession(r.Context(), s.cookie(r, "moat_session"))
	s.setCookie(w, "moat_session", "", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// limiter counts failed logins per key (client IP, account) in a sliding
// window. Memory is bounded: old keys are pruned, and past maxKeys the
// oldest half is dropped.
type limiter struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	now    func() time.Time
	fails  map[string][]time.Time
}

const maxKeys = 100000

func newLimiter(max int, window time.Duration, now func() time.Time) *limiter {
	return &limiter{max: max, window: window, now: now, fails: map[string][]time.Time{}}
}

func (l *limiter) recent(key string, now time.Time) []time.Time {
	ts := l.fails[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= l.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.fails, key)
	} else {
		l.fails[key] = ts
	}
	return ts
}

// blocked returns how long until the most limited key may try again, or 0.
func (l *limiter) blocked(keys ...string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var wait time.Duration
	for _, k := range keys {
		ts := l.recent(k, now)
		if len(ts) >= l.max {
			wait = max(wait, l.window-now.Sub(ts[len(ts)-l.max]))
		}
	}
	return wait
}

func (l *limiter) fail(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.fails) > maxKeys {
		for k := range l.fails {
			if len(l.recent(k, now)) == 0 || len(l.fails) > maxKeys/2 {
				delete(l.fails, k)
			}
		}
	}
	for _, k := range keys {
		ts := append(l.recent(k, now), now)
		if len(ts) > l.max*2 {
			ts = ts[len(ts)-l.max*2:]
		}
		l.fails[k] = ts
	}
}

func (l *limiter) reset(key string) {
	l.mu.Lock()
	delete(l.fails, key)
	l.mu.Unlock()
}

// flash is the one-line notice shown after an action. Only a code and a
// count travel in the cookie; the text comes from this table.
type flash struct {
	Kind, Text string
}

var flashes = map[string]flash{
	"released":   {"ok", "%d message(s) released. They are on their way to the mailbox."},
	"deleted":    {"ok", "%d message(s) deleted."},
	"spam":       {"ok", "%d message(s) reported as spam and deleted. Thank you: the filter learns from this."},
	"blocked":    {"ok", "Sender blocked; %d message(s) deleted."},
	"notheld":    {"warn", "%d message(s) were already released or deleted."},
	"virus":      {"error", "%d message(s) contain a virus and were not released."},
	"failed":     {"error", "%d message(s) could not be processed. Please try again later."},
	"noneselect": {"warn", "Select at least one message first.%.0d"},

	"thresholds":      {"ok", "Spam thresholds saved.%.0d"},
	"thresholdsreset": {"ok", "Spam thresholds reset: the domain's defaults apply.%.0d"},
	"allowadded":      {"ok", "Sender added to the allow list.%.0d"},
	"blockadded":      {"ok", "Sender added to the block list.%.0d"},
	"senderremoved":   {"ok", "Sender removed from the list.%.0d"},
	"notlisted":       {"warn", "That sender is not on the list (any more).%.0d"},
}

func (s *server) setFlash(w http.ResponseWriter, code string, n int) {
	s.setCookie(w, "moat_flash", code+"."+strconv.Itoa(n), 60)
}

func (s *server) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	v := s.cookie(r, "moat_flash")
	if v == "" {
		return nil
	}
	s.setCookie(w, "moat_flash", "", -1)
	var out *flash
	for _, part := range strings.Split(v, "_") {
		code, ns, _ := strings.Cut(part, ".")
		f, ok := flashes[code]
		n, err := strconv.Atoi(ns)
		if !ok || err != nil || n < 0 {
			continue
		}
		txt := strings.ReplaceAll(f.Text, "%d", strconv.Itoa(n))
		txt = strings.ReplaceAll(txt, "%.0d", "")
		if out == nil {
			out = &flash{Kind: f.Kind, Text: txt}
		} else {
			out.Text += " " + txt
			if f.Kind != "ok" {
				out.Kind = f.Kind
			}
		}
	}
	return out
}
