package web

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/users"
)

// scope returns what the logged-in user may see.
func (s *server) scope(r *http.Request) (users.Scope, error) {
	return s.users.Scope(r.Context(), sessionFrom(r.Context()).User)
}

// entry loads an entry the user may see; anything else is ErrNotFound, so
// an ID of someone else's message is indistinguishable from a wrong one.
func (s *server) entry(r *http.Request, id string) (*quarantine.Entry, error) {
	sc, err := s.scope(r)
	if err != nil {
		return nil, err
	}
	e, err := s.q.Get(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if !sc.Allows(e.Domain, e.Rcpt) {
		return nil, quarantine.ErrNotFound
	}
	return e, nil
}

type listData struct {
	Entries            []*quarantine.Entry
	Total, Page, Pages int
	Q, Rcpt, From, To  string
	Min, State         string
	ShowRcpt           bool
	Addresses          []string
	PrevURL, NextURL   string
	Filtered           bool
	States             []string
	ReturnTo           string
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	sc, err := s.scope(r)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	q := r.URL.Query()
	d := listData{Q: strings.TrimSpace(q.Get("q")), Rcpt: strings.TrimSpace(q.Get("rcpt")), From: q.Get("from"), To: q.Get("to"),
		Min: q.Get("min"), State: q.Get("state"), States: []string{"held", "released", "deleted", "expired", "all"},
		ReturnTo: r.URL.RequestURI()}
	f := quarantine.Filter{Restrict: !sc.All, OnlyRcpts: sc.Addresses, OnlyDomains: sc.Domains,
		Rcpt: d.Rcpt, Search: d.Q, Limit: s.cfg.PageSize}
	if t, err := time.ParseInLocation("2006-01-02", d.From, time.Local); err == nil {
		f.Since = t
	}
	if t, err := time.ParseInLocation("2006-01-02", d.To, time.Local); err == nil {
		f.Until = t.AddDate(0, 0, 1)
	}
	if v, err := strconv.ParseFloat(d.Min, 64); err == nil {
		f.MinScore = &v
	}
	switch d.State {
	case "released", "deleted", "expired", "all":
		f.State = quarantine.State(d.State)
	default:
		d.State = "held"
	}
	d.Page, _ = strconv.Atoi(q.Get("page"))
	d.Page = max(d.Page, 1)
	f.Offset = (d.Page - 1) * s.cfg.PageSize
	d.Entries, d.Total, err = s.q.List(r.Context(), f)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	d.Pages = max(1, (d.Total+s.cfg.PageSize-1)/s.cfg.PageSize)
	d.Filtered = d.Q != "" || d.Rcpt != "" || d.From != "" || d.To != "" || d.Min != "" || d.State != "held"
	d.ShowRcpt = sess.User.Role != users.EndUser || len(sess.User.Addresses) > 1
	d.Addresses = sess.User.Addresses
	if d.Page > 1 {
		d.PrevURL = pageURL("/quarantine", q, d.Page-1)
	}
	if d.Page < d.Pages {
		d.NextURL = pageURL("/quarantine", q, d.Page+1)
	}
	s.render(w, r, http.StatusOK, "list", page{Title: "Quarantine", Data: d})
}

// pageURL is path with the filters of q (the non-empty ones) and page p.
func pageURL(path string, q url.Values, p int) string {
	v := url.Values{}
	for k, vs := range q {
		if k != "page" && len(vs) > 0 && vs[0] != "" {
			v.Set(k, vs[0])
		}
	}
	v.Set("page", strconv.Itoa(p))
	return path + "?" + v.Encode()
}

type showData struct {
	E      *quarantine.Entry
	P      *preview
	Audit  []quarantine.AuditRecord
	CanAct bool
}

func (s *server) show(w http.ResponseWriter, r *http.Request) {
	e, err := s.entry(r, r.PathValue("id"))
	if s.lookupFailed(w, r, err, quarantine.ErrNotFound) {
		return
	}
	d := showData{E: e, CanAct: e.State == quarantine.Held}
	if rc, err := s.q.Open(r.Context(), e.ID); err == nil {
		d.P = parsePreview(rc)
		rc.Close()
	} else if !errors.Is(err, quarantine.ErrNotFound) {
		s.internal(w, r, err)
		return
	}
	d.Audit, _ = s.q.Audit(r.Context(), e.ID)
	title := "Message"
	if e.Subject != "" {
		title = e.Subject
	}
	s.render(w, r, http.StatusOK, "show", page{Title: title, Data: d})
}

// body serves the message's HTML, sanitized, for the sandboxed frame of
// the preview, under a CSP that allows no script and no network access.
func (s *server) body(w http.ResponseWriter, r *http.Request) {
	e, err := s.entry(r, r.PathValue("id"))
	if s.lookupFailed(w, r, err, quarantine.ErrNotFound) {
		return
	}
	rc, err := s.q.Open(r.Context(), e.ID)
	if err != nil {
		s.notFound(w, r, err)
		return
	}
	p := parsePreview(rc)
	rc.Close()
	h := w.Header()
	h.Set("Content-Security-Policy", cspFrame)
	h.Set("X-Frame-Options", "SAMEORIGIN")
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.Write([]byte("<!DOCTYPE html><meta charset=\"utf-8\"><base target=\"_self\">"))
	if p.HTML == "" {
		w.Write([]byte("<p style=\"font-family:sans-serif;color:#52606d\">This message has no HTML part.</p>"))
		return
	}
	w.Write([]byte(sanitizeHTML(p.HTML)))
}

// tally counts the results of actions for the flash message.
type tally map[string]int

func (t tally) add(err error, ok string) {
	switch {
	case err == nil:
		t[ok]++
	case errors.Is(err, quarantine.ErrNotHeld):
		t["notheld"]++
	case errors.Is(err, quarantine.ErrInfected):
		t["virus"]++
	case errors.Is(err, quarantine.ErrNotFound):
		t["notheld"]++
	default:
		t["failed"]++
	}
}

func (s *server) setTally(w http.ResponseWriter, t tally) {
	var parts []string
	for _, k := range []string{"released", "deleted", "spam", "blocked", "notheld", "virus", "failed", "noneselect"} {
		if n, ok := t[k]; ok {
			parts = append(parts, k+"."+strconv.Itoa(n))
		}
	}
	if len(parts) > 0 {
		s.setCookie(w, "moat_flash", strings.Join(parts, "_"), 60)
	}
}

// apply runs one action on one entry the user may see.
func (s *server) apply(r *http.Request, e *quarantine.Entry, action string, teach, allow bool) (string, error) {
	by := sessionFrom(r.Context()).User.Name
	ctx := r.Context()
	var err error
	ok := ""
	switch action {
	case "release":
		_, err = s.q.Release(ctx, e.ID, quarantine.ReleaseOptions{By: by, Teach: teach, AllowSender: allow})
		ok = "released"
	case "release_teach":
		_, err = s.q.Release(ctx, e.ID, quarantine.ReleaseOptions{By: by, Teach: true, AllowSender: allow})
		ok = "released"
	case "delete":
		err = s.q.Delete(ctx, e.ID, by)
		ok = "deleted"
	case "spam":
		err = s.q.ReportSpam(ctx, e.ID, by)
		ok = "spam"
	case "block":
		if e.From == "" {
			return "failed", errors.New("null sender")
		}
		if err = s.q.Prefs.BlockSender(ctx, e.Rcpt, e.From, by); err == nil {
			err = s.q.Delete(ctx, e.ID, by)
		}
		ok = "blocked"
	default:
		return "", errUnknownAction
	}
	res := "ok"
	if err != nil {
		res = "error"
		if !errors.Is(err, quarantine.ErrNotHeld) && !errors.Is(err, quarantine.ErrInfected) {
			s.log.Error("web: action failed", "action", action, "entry", e.ID, "user", by, "err", err)
		}
	}
	s.mActions.WithLabelValues(action, res).Inc()
	return ok, err
}

var errUnknownAction = errors.New("unknown action")

func (s *server) act(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	e, err := s.entry(r, r.PathValue("id"))
	if s.lookupFailed(w, r, err, quarantine.ErrNotFound) {
		return
	}
	t := tally{}
	ok, err := s.apply(r, e, action, r.PostFormValue("teach") != "", r.PostFormValue("allow") != "")
	if errors.Is(err, errUnknownAction) {
		s.notFound(w, r, err)
		return
	}
	t.add(err, ok)
	s.setTally(w, t)
	dest := "/quarantine"
	if err != nil {
		dest = "/quarantine/" + url.PathEscape(e.ID)
	}
	http.Redirect(w, r, dest, http.StatusSeeOther)
}

func (s *server) bulk(w http.ResponseWriter, r *http.Request) {
	action := r.PostFormValue("action")
	switch action {
	case "release", "release_teach", "delete", "spam":
	default:
		s.message(w, r, http.StatusBadRequest, "Unknown action", "Choose release, delete or report spam.")
		return
	}
	ids := r.PostForm["id"]
	back := safeNext(r.PostFormValue("return"))
	t := tally{}
	if len(ids) == 0 {
		t["noneselect"] = 0
	}
	if len(ids) > 1000 {
		ids = ids[:1000]
	}
	for _, id := range ids {
		e, err := s.entry(r, id)
		if err != nil {
			t.add(err, "")
			continue
		}
		ok, err := s.apply(r, e, action, false, false)
		t.add(err, ok)
	}
	s.setTally(w, t)
	http.Redirect(w, r, back, http.StatusSeeOther)
}

type linkData struct {
	Token    string
	Action   string
	E        *quarantine.Entry
	Done     bool
	Problem  string
	Released bool
}

func linkProblem(err error) string {
	switch {
	case errors.Is(err, quarantine.ErrLinkExpired):
		return "This link has expired. Sign in to review your held mail."
	case errors.Is(err, quarantine.ErrLinkUsed):
		return "This link has already been used. Each link works once."
	case errors.Is(err, quarantine.ErrNotHeld):
		return "This message has already been released or deleted."
	case errors.Is(err, quarantine.ErrInfected):
		return "This message contains a virus and cannot be released."
	}
	return "This link is not valid."
}

// linkPage is the confirmation page of a digest link: following the link
// changes nothing (mail scanners and prefetchers follow links); the button
// on it POSTs the token.
func (s *server) linkPage(w http.ResponseWriter, r *http.Request) {
	tok := r.PathValue("token")
	l, e, err := s.q.CheckLink(r.Context(), tok)
	if err == nil && e.State != quarantine.Held && l.Action != quarantine.LinkAllow && l.Action != quarantine.LinkBlock {
		err = quarantine.ErrNotHeld
	}
	if err != nil {
		status := http.StatusForbidden
		if errors.Is(err, quarantine.ErrNotFound) {
			status = http.StatusNotFound
		}
		s.render(w, r, status, "link", page{Title: "Link refused", Data: linkData{Problem: linkProblem(err)}})
		return
	}
	s.render(w, r, http.StatusOK, "link", page{Title: "Confirm", CSRF: s.preCSRF(w, r),
		Data: linkData{Token: tok, Action: l.Action.Describe(), E: e}})
}

func (s *server) linkPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if !s.checkPreCSRF(r) {
		s.message(w, r, http.StatusForbidden, "Request refused", "The form has expired. Open the link from the email again.")
		return
	}
	tok := r.PathValue("token")
	l, e, err := s.q.RedeemLink(r.Context(), tok)
	if err != nil {
		status := http.StatusForbidden
		if !errors.Is(err, quarantine.ErrLinkExpired) && !errors.Is(err, quarantine.ErrLinkUsed) && !errors.Is(err, quarantine.ErrLinkInvalid) &&
			!errors.Is(err, quarantine.ErrNotHeld) && !errors.Is(err, quarantine.ErrInfected) && !errors.Is(err, quarantine.ErrNotFound) {
			s.log.Error("web: link action failed", "err", err)
			status = http.StatusServiceUnavailable
		}
		s.render(w, r, status, "link", page{Title: "Link refused", Data: linkData{Problem: linkProblem(err)}})
		return
	}
	s.mActions.WithLabelValues("link_"+string(l.Action), "ok").Inc()
	s.render(w, r, http.StatusOK, "link", page{Title: "Done", Data: linkData{Done: true, Action: l.Action.Describe(), E: e,
		Released: l.Action != quarantine.LinkBlock}})
}
