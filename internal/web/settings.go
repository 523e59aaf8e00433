package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/users"
)

// The spam settings page: a person's own score thresholds (tag,
// quarantine, reject; blank keeps the domain's) and personal sender allow
// and block lists. An end user manages its own addresses; an
// administrator one address at a time (?rcpt=), within its scope.

// settingsAddr is one address on the settings page.
type settingsAddr struct {
	Rcpt string
	// The stored thresholds, formatted ("" = the domain's).
	CurTag, CurQuarantine, CurReject string
	Own                              bool // some threshold of its own is set
	// The values of the thresholds form: the stored ones, or the refused
	// input after an error.
	Tag, Quarantine, Reject string
	Prefs                   []quarantine.Pref
	// The values of the add-sender form (kept after a refused add).
	Sender, Kind string
}

type settingsData struct {
	Admin bool   // picks one address with ?rcpt=
	Pick  string // the picker's value
	Addrs []settingsAddr
	None  bool // an end user without addresses
}

// mayManage reports whether the signed-in user may change the settings of
// rcpt (a lower-case address): an end user its own addresses, an
// administrator the addresses of its domains.
func (s *server) mayManage(r *http.Request, rcpt string) (bool, error) {
	if !validAddress(rcpt) {
		return false, nil
	}
	sc, err := s.scope(r)
	if err != nil {
		return false, err
	}
	_, domain, _ := strings.Cut(rcpt, "@")
	return sc.Allows(domain, rcpt), nil
}

func (s *server) forbidden(w http.ResponseWriter, r *http.Request) {
	s.message(w, r, http.StatusForbidden, "Not allowed", "You may not change the settings of this address.")
}

// settingsURL is where a settings form returns to.
func settingsURL(u *users.User, rcpt string) string {
	if u.Role == users.EndUser {
		return "/settings"
	}
	return "/settings?" + url.Values{"rcpt": {rcpt}}.Encode()
}

func (s *server) settings(w http.ResponseWriter, r *http.Request) {
	s.settingsPage(w, r, http.StatusOK, r.URL.Query().Get("rcpt"), nil, nil)
}

// settingsPage renders the settings of the addresses the user manages: an
// end user's own, or the one an administrator picked (pick). fl is an
// error to show; keep, if set, puts refused input back into its form.
func (s *server) settingsPage(w http.ResponseWriter, r *http.Request, status int, pick string, fl *flash, keep func(*settingsAddr)) {
	u := sessionFrom(r.Context()).User
	d := settingsData{}
	var rcpts []string
	if u.Role == users.EndUser {
		rcpts = u.Addresses
		d.None = len(rcpts) == 0
	} else {
		d.Admin = true
		d.Pick = strings.ToLower(strings.TrimSpace(pick))
		if len(d.Pick) > 320 {
			d.Pick = ""
		}
		if d.Pick != "" {
			ok, err := s.mayManage(r, d.Pick)
			switch {
			case err != nil:
				s.internal(w, r, err)
				return
			case !validAddress(d.Pick):
				if fl == nil {
					fl = &flash{Kind: "error", Text: fmt.Sprintf("%q is not an email address (name@example.com).", d.Pick)}
					status = http.StatusBadRequest
				}
			case !ok:
				s.forbidden(w, r)
				return
			default:
				rcpts = []string{d.Pick}
			}
		}
	}
	for _, rcpt := range rcpts {
		a, err := s.loadSettings(r, rcpt)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		if keep != nil {
			keep(&a)
		}
		d.Addrs = append(d.Addrs, a)
	}
	s.render(w, r, status, "settings", page{Title: "Spam settings", Flash: fl, Data: d})
}

func (s *server) loadSettings(r *http.Request, rcpt string) (settingsAddr, error) {
	ctx := r.Context()
	a := settingsAddr{Rcpt: rcpt, Kind: quarantine.Allow}
	t, err := s.q.Prefs.Thresholds(ctx, rcpt)
	if err != nil {
		return a, err
	}
	a.Own = !t.IsZero()
	a.CurTag, a.CurQuarantine, a.CurReject = formatScore(t.Tag), formatScore(t.Quarantine), formatScore(t.Reject)
	a.Tag, a.Quarantine, a.Reject = a.CurTag, a.CurQuarantine, a.CurReject
	a.Prefs, err = s.q.Prefs.List(ctx, rcpt)
	return a, err
}

func formatScore(v *float64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatFloat(*v, 'f', -1, 64)
}

var numberRE = regexp.MustCompile(`^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$`)

// parseScore parses one threshold field; blank is nil (the domain's).
func parseScore(name, v string) (*float64, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	if len(v) > 32 || !numberRE.MatchString(v) {
		if len(v) > 32 {
			v = v[:32] + "…"
		}
		return nil, fmt.Errorf("%s: %q is not a number", name, v)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not a number", name, v)
	}
	return &f, nil
}

// postRcpt is the address a settings form acts for, if the user may
// manage it; otherwise it answers 403 (or 500) and returns "".
func (s *server) postRcpt(w http.ResponseWriter, r *http.Request) string {
	rcpt := strings.ToLower(strings.TrimSpace(r.PostFormValue("rcpt")))
	ok, err := s.mayManage(r, rcpt)
	if err != nil {
		s.internal(w, r, err)
		return ""
	}
	if !ok {
		s.log.Warn("web: settings refused", "user", sessionFrom(r.Context()).User.Name, "rcpt", rcpt, "path", r.URL.Path)
		s.forbidden(w, r)
		return ""
	}
	return rcpt
}

// only returns a keep function that applies f to the form of rcpt.
func only(rcpt string, f func(*settingsAddr)) func(*settingsAddr) {
	return func(a *settingsAddr) {
		if a.Rcpt == rcpt {
			f(a)
		}
	}
}

func (s *server) thresholdsPost(w http.ResponseWriter, r *http.Request) {
	rcpt := s.postRcpt(w, r)
	if rcpt == "" {
		return
	}
	u := sessionFrom(r.Context()).User
	in := [3]string{r.PostFormValue("tag"), r.PostFormValue("quarantine"), r.PostFormValue("reject")}
	var t policy.Thresholds
	var err error
	for i, f := range []struct {
		name string
		dst  **float64
	}{{"tag", &t.Tag}, {"quarantine", &t.Quarantine}, {"reject", &t.Reject}} {
		if *f.dst, err = parseScore(f.name, in[i]); err != nil {
			break
		}
	}
	if err == nil {
		err = t.Validate()
	}
	if err != nil {
		s.mActions.WithLabelValues("thresholds", "invalid").Inc()
		s.settingsPage(w, r, http.StatusBadRequest, rcpt, &flash{Kind: "error", Text: "Not saved: " + err.Error() + "."},
			only(rcpt, func(a *settingsAddr) { a.Tag, a.Quarantine, a.Reject = in[0], in[1], in[2] }))
		return
	}
	if err := s.q.Prefs.SetThresholds(r.Context(), rcpt, t, u.Name); err != nil {
		s.mActions.WithLabelValues("thresholds", "error").Inc()
		s.internal(w, r, err)
		return
	}
	s.mActions.WithLabelValues("thresholds", "ok").Inc()
	s.log.Info("web: thresholds set", "user", u.Name, "rcpt", rcpt, "thresholds", t.String())
	if t.IsZero() {
		s.setFlash(w, "thresholdsreset", 0)
	} else {
		s.setFlash(w, "thresholds", 0)
	}
	http.Redirect(w, r, settingsURL(u, rcpt), http.StatusSeeOther)
}

func (s *server) sendersPost(w http.ResponseWriter, r *http.Request) {
	rcpt := s.postRcpt(w, r)
	if rcpt == "" {
		return
	}
	u := sessionFrom(r.Context()).User
	kind, raw := r.PostFormValue("kind"), r.PostFormValue("sender")
	sender, err := checkSender(raw)
	if err == nil && kind != quarantine.Allow && kind != quarantine.Block {
		err = errors.New("choose whether to allow or to block the sender")
	}
	if err != nil {
		s.mActions.WithLabelValues("add_sender", "invalid").Inc()
		s.settingsPage(w, r, http.StatusBadRequest, rcpt, &flash{Kind: "error", Text: "Not added: " + err.Error() + "."},
			only(rcpt, func(a *settingsAddr) {
				a.Sender = raw
				if kind == quarantine.Block {
					a.Kind = kind
				}
			}))
		return
	}
	ctx := r.Context()
	if kind == quarantine.Allow {
		err = s.q.Prefs.AllowSender(ctx, rcpt, sender, u.Name)
	} else {
		err = s.q.Prefs.BlockSender(ctx, rcpt, sender, u.Name)
	}
	if err != nil {
		s.mActions.WithLabelValues(kind+"_sender", "error").Inc()
		s.internal(w, r, err)
		return
	}
	s.mActions.WithLabelValues(kind+"_sender", "ok").Inc()
	s.setFlash(w, kind+"added", 0)
	http.Redirect(w, r, settingsURL(u, rcpt), http.StatusSeeOther)
}

func (s *server) senderRemovePost(w http.ResponseWriter, r *http.Request) {
	rcpt := s.postRcpt(w, r)
	if rcpt == "" {
		return
	}
	u := sessionFrom(r.Context()).User
	ctx := r.Context()
	// Entries need not pass checkSender: "block the sender" on a held
	// message stores its envelope sender as it is, and it must be
	// removable. Only empty, overlong and control characters are refused.
	sender := strings.ToLower(strings.TrimSpace(r.PostFormValue("sender")))
	if sender == "" || len(sender) > 1024 || strings.ContainsFunc(sender, unicode.IsControl) {
		s.settingsPage(w, r, http.StatusBadRequest, rcpt, &flash{Kind: "error", Text: "Not removed: that is not a sender address."}, nil)
		return
	}
	prefs, err := s.q.Prefs.List(ctx, rcpt)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	if !slices.ContainsFunc(prefs, func(p quarantine.Pref) bool { return p.Sender == sender }) {
		s.setFlash(w, "notlisted", 0)
		http.Redirect(w, r, settingsURL(u, rcpt), http.StatusSeeOther)
		return
	}
	if err := s.q.Prefs.Remove(ctx, rcpt, sender); err != nil {
		s.mActions.WithLabelValues("remove_sender", "error").Inc()
		s.internal(w, r, err)
		return
	}
	s.mActions.WithLabelValues("remove_sender", "ok").Inc()
	s.log.Info("web: sender removed", "user", u.Name, "rcpt", rcpt, "sender", sender)
	s.setFlash(w, "senderremoved", 0)
	http.Redirect(w, r, settingsURL(u, rcpt), http.StatusSeeOther)
}

// badRune reports spaces, control and invisible format characters (such
// as bidirectional overrides).
func badRune(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError
}

// checkSender returns sender trimmed and in lower case if it is an
// address (name@example.com) or a whole domain (@example.com).
func checkSender(sender string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(sender))
	const form = "an address (name@example.com) or a whole domain (@example.com)"
	switch {
	case s == "":
		return "", errors.New("enter a sender: " + form)
	case len(s) > 254:
		return "", errors.New("the sender is too long")
	case !utf8.ValidString(s) || strings.ContainsFunc(s, badRune):
		return "", errors.New("a sender cannot contain spaces or control characters")
	}
	local, domain, ok := strings.Cut(s, "@")
	if !ok || strings.Contains(domain, "@") || len(local) > 64 || strings.ContainsAny(local, `<>()[],;:"\`) {
		return "", fmt.Errorf("%q is not %s", s, form)
	}
	if !validDomain(domain) {
		return "", fmt.Errorf("%q is not %s: %q is not a domain name", s, form, domain)
	}
	return s, nil
}

// validAddress reports whether a is name@domain (lower case), with the
// rules of checkSender.
func validAddress(a string) bool {
	s, err := checkSender(a)
	return err == nil && s == a && !strings.HasPrefix(a, "@")
}

// validDomain reports whether d is a domain name of at least two labels:
// letters (also non-ASCII ones), digits and inner hyphens.
func validDomain(d string) bool {
	if len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r >= 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r))) {
				return false
			}
		}
	}
	return true
}
