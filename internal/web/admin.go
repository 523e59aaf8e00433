package web

import (
	"cmp"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/users"
)

// The admin console: leakage audit results with bypass monitoring,
// message tracking and statistics. Only administrators see it (end users
// get 404), each scoped to its domains: a domain admin its own domains, a
// partner admin its partner's, a site admin all.

// navLink is one entry of the console's navigation.
type navLink struct{ Path, Label string }

var sections = []string{"/leakage", "/tracking", "/stats", "/settings"}

// section maps a request path to its navigation entry.
func section(path string) string {
	for _, p := range sections {
		if path == p || strings.HasPrefix(path, p+"/") {
			return p
		}
	}
	return "/quarantine"
}

func isAdmin(u *users.User) bool {
	if u == nil {
		return false
	}
	switch u.Role {
	case users.SiteAdmin, users.PartnerAdmin, users.DomainAdmin:
		return true
	}
	return false
}

// nav returns the console links u may follow; none for end users, and none
// when no console page is configured (the quarantine is then the only page).
func (s *server) nav(u *users.User) []navLink {
	if !isAdmin(u) {
		return nil
	}
	out := []navLink{{"/quarantine", "Quarantine"}}
	if s.audit != nil || s.bypass != nil {
		out = append(out, navLink{"/leakage", "Leakage"})
	}
	if s.tracker != nil {
		out = append(out, navLink{"/tracking", "Message tracking"}, navLink{"/stats", "Statistics"})
	}
	if len(out) == 1 {
		return nil
	}
	return out
}

// adminRoutes registers the console pages whose dependencies are set.
func (s *server) adminRoutes(mux *http.ServeMux) {
	if s.audit != nil || s.bypass != nil {
		mux.HandleFunc("GET /leakage", s.authed(s.adminOnly(s.leakage)))
	}
	if s.tracker != nil {
		mux.HandleFunc("GET /tracking", s.authed(s.adminOnly(s.trackingSearch)))
		mux.HandleFunc("GET /tracking/{id}", s.authed(s.adminOnly(s.trackingMessage)))
		mux.HandleFunc("GET /stats", s.authed(s.adminOnly(s.stats)))
	}
}

// adminOnly answers 404 to anyone but an administrator, so end users
// cannot tell the console exists.
func (s *server) adminOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !isAdmin(sessionFrom(r.Context()).User) {
			s.notFound(w, r, nil)
			return
		}
		h(w, r)
	}
}

// domainScope is the set of domains an administrator may see.
type domainScope struct {
	all     bool
	domains []string // lower case, sorted
}

func (s *server) adminScope(r *http.Request) (domainScope, error) {
	sc, err := s.scope(r)
	if err != nil {
		return domainScope{}, err
	}
	ds := domainScope{all: sc.All}
	for _, d := range sc.Domains {
		ds.domains = append(ds.domains, strings.ToLower(d))
	}
	slices.Sort(ds.domains)
	ds.domains = slices.Compact(ds.domains)
	return ds, nil
}

func (d domainScope) allows(domain string) bool {
	return d.all || slices.Contains(d.domains, strings.ToLower(domain))
}

// ago is a short relative time ("5 min ago").
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

var consoleFuncs = template.FuncMap{
	"datetime": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"join": strings.Join,
	"actionClass": func(a string) string {
		switch a {
		case "delivered", "tagged", "quarantined", "rejected", "tempfailed", "abandoned",
			"deferred", "failed", "expired":
			return a
		}
		return "other"
	},
	"bypassURL": func(ip string) string { return "/tracking?" + url.Values{"ip": {ip}}.Encode() },
}

// ---- Leakage ----

type findingGroup struct {
	Severity string // critical, warning, info
	Label    string
	Findings []audit.Finding
}

type leakDomain struct {
	Name                    string
	Status                  string // risk, clean, unknown
	Audited                 bool
	Error                   string
	Critical, Warning, Info int
	Groups                  []findingGroup
	Probes                  []audit.Probe
	Candidates              []audit.Candidate
	Bypass                  *milter.DomainStats
	BypassAgo               string
	rank                    int
	bypassCount             uint64
}

type leakData struct {
	AuditEnabled, BypassEnabled bool
	HasAudit, AuditFailed       bool
	AuditAt                     time.Time
	AuditAgo                    string
	FailedAt                    time.Time
	Probed                      bool
	BypassSince                 time.Time
	Domains                     []leakDomain
	Total, AtRisk, Clean        int
	Critical, Warnings          int
	BypassTotal                 uint64
	Filter                      string // domain substring
	RiskOnly                    bool
	Filtered                    bool
}

var severityGroups = []struct {
	sev         audit.Severity
	name, label string
}{
	{audit.Critical, "critical", "Critical"},
	{audit.Warning, "warning", "Warnings"},
	{audit.Info, "info", "Information"},
}

func (s *server) leakage(w http.ResponseWriter, r *http.Request) {
	sc, err := s.adminScope(r)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	now := s.now()
	q := r.URL.Query()
	d := leakData{AuditEnabled: s.audit != nil, BypassEnabled: s.bypass != nil, BypassSince: s.bypassSince,
		Filter: strings.ToLower(strings.TrimSpace(q.Get("domain"))), RiskOnly: q.Get("risk") != ""}
	d.Filtered = d.Filter != "" || d.RiskOnly
	byName := map[string]*leakDomain{}
	get := func(name string) *leakDomain {
		name = strings.ToLower(name)
		ld := byName[name]
		if ld == nil {
			ld = &leakDomain{Name: name}
			byName[name] = ld
		}
		return ld
	}
	if s.audit != nil {
		rep, at, err := s.audit()
		if err != nil {
			// The error may carry resolver or network details: log it, show
			// only that the run failed, and when.
			s.log.Warn("web: latest leakage audit failed", "err", err)
			d.AuditFailed, d.FailedAt = true, at
		}
		if rep != nil {
			d.HasAudit = true
			d.Probed = rep.Probed
			// The report's own time: after a failed run, at is the time of
			// that run, not of the report shown.
			d.AuditAt = rep.Started.Add(rep.Duration)
			if rep.Started.IsZero() {
				d.AuditAt = at
			}
			d.AuditAgo = ago(now, d.AuditAt)
			for _, dr := range rep.Domains {
				if dr == nil || !sc.allows(dr.Domain) {
					continue
				}
				ld := get(dr.Domain)
				ld.Audited = true
				ld.Error = dr.Error
				ld.Probes = dr.Probes
				ld.Candidates = dr.Candidates
				for _, g := range severityGroups {
					var fs []audit.Finding
					for _, f := range dr.Findings {
						if f.Severity == g.sev {
							fs = append(fs, f)
						}
					}
					switch g.sev {
					case audit.Critical:
						ld.Critical = len(fs)
					case audit.Warning:
						ld.Warning = len(fs)
					default:
						ld.Info = len(fs)
					}
					if len(fs) > 0 {
						ld.Groups = append(ld.Groups, findingGroup{Severity: g.name, Label: g.label, Findings: fs})
					}
				}
			}
		}
	}
	if s.bypass != nil {
		for _, st := range s.bypass() {
			if !sc.allows(st.Domain) {
				continue
			}
			st := st
			ld := get(st.Domain)
			ld.Bypass = &st
			ld.bypassCount = st.Count
			ld.BypassAgo = ago(now, st.LastSeen)
		}
	}
	if !sc.all {
		for _, n := range sc.domains {
			get(n)
		}
	}
	for _, ld := range byName {
		switch {
		case ld.Critical > 0 || ld.Warning > 0 || ld.bypassCount > 0 || ld.Error != "":
			ld.Status = "risk"
			ld.rank = 0
		case ld.Audited || (s.audit == nil && s.bypass != nil):
			// Audited without problems, or (no audit configured) no
			// bypass seen.
			ld.Status = "clean"
			ld.rank = 2
		default:
			ld.Status = "unknown"
			ld.rank = 1
		}
		d.Total++
		if ld.Status == "risk" {
			d.AtRisk++
		} else if ld.Status == "clean" {
			d.Clean++
		}
		d.Critical += ld.Critical
		d.Warnings += ld.Warning
		d.BypassTotal += ld.bypassCount
		if d.Filter != "" && !strings.Contains(ld.Name, d.Filter) {
			continue
		}
		if d.RiskOnly && ld.Status != "risk" {
			continue
		}
		d.Domains = append(d.Domains, *ld)
	}
	slices.SortFunc(d.Domains, func(a, b leakDomain) int {
		return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(b.Critical, a.Critical), cmp.Compare(b.bypassCount, a.bypassCount),
			cmp.Compare(b.Warning, a.Warning), cmp.Compare(a.Name, b.Name))
	})
	s.render(w, r, http.StatusOK, "leakage", page{Title: "Leakage", Data: d})
}

// ---- Message tracking ----

type trackForm struct {
	QueueID, From, Rcpt, IP, Since, Until, Action string
}

type trackData struct {
	F                trackForm
	Actions          []string
	Results          []tracking.Message
	Searched         bool
	Problems         []string
	Page             int
	PrevURL, NextURL string
}

// parseLocalTime reads the value of a datetime-local or date input (or
// RFC 3339); dateOnly reports a bare date.
func parseLocalTime(v string) (t time.Time, dateOnly bool, err error) {
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02 15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, false, nil
		}
	}
	if t, err := time.ParseInLocation("2006-01-02", v, time.Local); err == nil {
		return t, true, nil
	}
	t, err = time.Parse(time.RFC3339, v)
	return t, false, err
}

func (s *server) trackingSearch(w http.ResponseWriter, r *http.Request) {
	sc, err := s.adminScope(r)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	q := r.URL.Query()
	val := func(k string, n int) string {
		v := strings.TrimSpace(q.Get(k))
		if len(v) > n {
			v = v[:n]
		}
		return v
	}
	d := trackData{Actions: tracking.Actions, F: trackForm{QueueID: val("id", 128), From: val("from", 320), Rcpt: val("rcpt", 320),
		IP: val("ip", 64), Since: val("since", 40), Until: val("until", 40), Action: val("action", 32)}}
	tq := tracking.Query{QueueID: d.F.QueueID, From: d.F.From, Rcpt: d.F.Rcpt, Limit: s.cfg.PageSize + 1,
		Scoped: !sc.all, Domains: sc.domains}
	if d.F.IP != "" {
		if a, err := netip.ParseAddr(d.F.IP); err != nil {
			d.Problems = append(d.Problems, "Client IP: not an IP address.")
		} else {
			tq.ClientIP = a.Unmap().String()
		}
	}
	if d.F.Since != "" {
		if t, _, err := parseLocalTime(d.F.Since); err != nil {
			d.Problems = append(d.Problems, "From time: not a date and time.")
		} else {
			tq.Since = t
		}
	}
	if d.F.Until != "" {
		if t, dateOnly, err := parseLocalTime(d.F.Until); err != nil {
			d.Problems = append(d.Problems, "Until time: not a date and time.")
		} else {
			if dateOnly {
				t = t.AddDate(0, 0, 1)
			}
			tq.Until = t
		}
	}
	if d.F.Action != "" {
		if !slices.Contains(tracking.Actions, d.F.Action) {
			d.Problems = append(d.Problems, "Action: unknown.")
		} else {
			tq.Action = d.F.Action
		}
	}
	d.Searched = d.F != (trackForm{})
	d.Page, _ = strconv.Atoi(q.Get("page"))
	d.Page = min(max(d.Page, 1), 1000)
	tq.Offset = (d.Page - 1) * s.cfg.PageSize
	if len(d.Problems) == 0 {
		d.Results, err = s.tracker.Search(r.Context(), tq)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		if !sc.all {
			// The tracker matches Rcpt against any recipient and the scope
			// against any recipient: a message to both domains would let a
			// scoped admin probe the other domain's addresses. Keep messages
			// whose matching recipient is in scope, and show only those.
			needle := strings.ToLower(tq.Rcpt)
			for i := range d.Results {
				m := &d.Results[i]
				m.Rcpts = slices.DeleteFunc(m.Rcpts, func(a string) bool { return !sc.allows(tracking.DomainOf(a)) })
				m.Status = slices.DeleteFunc(m.Status, func(st tracking.RcptStatus) bool { return !sc.allows(tracking.DomainOf(st.Rcpt)) })
			}
			d.Results = slices.DeleteFunc(d.Results, func(m tracking.Message) bool {
				return !slices.ContainsFunc(m.Rcpts, func(a string) bool { return strings.Contains(strings.ToLower(a), needle) })
			})
		}
	}
	if len(d.Results) > s.cfg.PageSize {
		d.Results = d.Results[:s.cfg.PageSize]
		d.NextURL = pageURL("/tracking", q, d.Page+1)
	}
	if d.Page > 1 {
		d.PrevURL = pageURL("/tracking", q, d.Page-1)
	}
	s.render(w, r, http.StatusOK, "tracking", page{Title: "Message tracking", Data: d})
}

// tlEntry is one step of a message's timeline.
type tlEntry struct {
	Time                      time.Time
	Kind                      string // received, delivered, deferred, failed, expired, log, warn
	Title                     string
	Rcpt, Host, Reply, Detail string
}

type trackMsgData struct {
	M        *tracking.Message
	Timeline []tlEntry
}

func (s *server) trackingMessage(w http.ResponseWriter, r *http.Request) {
	sc, err := s.adminScope(r)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	id := r.PathValue("id")
	m, err := s.tracker.Message(r.Context(), id, !sc.all, sc.domains)
	if s.lookupFailed(w, r, err, tracking.ErrNotFound) {
		return
	}
	evs, err := s.tracker.Events(r.Context(), m.QueueID)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	d := trackMsgData{M: m}
	for _, e := range evs {
		// A scoped admin sees the deliveries to its own domains only; the
		// message may have had recipients elsewhere. An event about
		// another domain without a recipient (the relay's "backend
		// failed", naming that domain's backend) is hidden too; events
		// about neither (the SMTP transaction) are the message's own.
		if !sc.all && (e.Rcpt != "" || e.Domain != "") &&
			!(e.Rcpt != "" && sc.allows(tracking.DomainOf(e.Rcpt))) && !(e.Domain != "" && sc.allows(e.Domain)) {
			continue
		}
		t := tlEntry{Time: e.Time, Kind: "log", Title: e.Msg, Rcpt: e.Rcpt, Host: e.Host, Reply: e.Reply, Detail: e.Detail}
		switch {
		case e.Kind == tracking.KindTxn:
			t.Kind = "received"
			t.Title = "Received over SMTP"
			if m.Action != "" {
				t.Title += ": " + m.Action
			}
		case e.Kind == tracking.KindDelivery:
			t.Kind = e.Outcome
			t.Title = "Delivery " + e.Outcome
		case e.Level == "WARN" || e.Level == "ERROR":
			t.Kind = "warn"
		}
		d.Timeline = append(d.Timeline, t)
	}
	if !sc.all {
		m.Rcpts = slices.DeleteFunc(m.Rcpts, func(a string) bool { return !sc.allows(tracking.DomainOf(a)) })
		m.Status = slices.DeleteFunc(m.Status, func(st tracking.RcptStatus) bool { return !sc.allows(tracking.DomainOf(st.Rcpt)) })
	}
	s.render(w, r, http.StatusOK, "track", page{Title: "Message " + m.QueueID, Data: d})
}

// ---- Statistics ----

type barRow struct {
	Name  string
	Count int64
	Share string // percent of the total, "12.5%"
	W     int    // bar width, percent of the largest row
}

type chartSeg struct {
	Action string
	H      int // percent of the chart height
}

type chartCol struct {
	Label string // axis label, or ""
	Title string // tooltip
	Segs  []chartSeg
}

type reasonRow struct {
	Reason  string
	Count   int64
	W       int
	Domains string
}

type statsData struct {
	Range      string
	Ranges     []navLink
	Since      time.Time
	Until      time.Time
	Bucket     string
	Total      int64
	Actions    []barRow
	Columns    []chartCol
	ChartMax   int64
	Deliveries []barRow
	Reasons    []reasonRow
}

func barRows(names []string, counts map[string]int64) ([]barRow, int64) {
	var total, top int64
	for _, n := range names {
		total += counts[n]
		top = max(top, counts[n])
	}
	out := make([]barRow, 0, len(names))
	for _, n := range names {
		c := counts[n]
		row := barRow{Name: n, Count: c, Share: "0%"}
		if total > 0 {
			row.Share = strconv.FormatFloat(float64(c)*100/float64(total), 'f', 1, 64) + "%"
		}
		if top > 0 {
			row.W = pct(c, top)
		}
		out = append(out, row)
	}
	return out, total
}

// pct is n/of in whole percent, at least 1 for any n > 0.
func pct(n, of int64) int {
	if n <= 0 || of <= 0 {
		return 0
	}
	return int(min(100, max(1, (n*100+of/2)/of)))
}

func (s *server) stats(w http.ResponseWriter, r *http.Request) {
	sc, err := s.adminScope(r)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	d := statsData{Range: r.URL.Query().Get("range"), Ranges: []navLink{{"24h", "Last 24 hours"}, {"7d", "Last 7 days"}}}
	span, bucket := 24*time.Hour, time.Hour
	if d.Range == "7d" {
		span, bucket = 7*24*time.Hour, 6*time.Hour
	} else {
		d.Range = "24h"
	}
	now := s.now()
	st, err := s.tracker.Stats(r.Context(), tracking.StatsQuery{Since: now.Add(-span).Add(bucket), Until: now, Bucket: bucket,
		TopReasons: 10, Scoped: !sc.all, Domains: sc.domains})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	d.Since, d.Until, d.Bucket = st.Since, st.Until, "hour"
	if bucket != time.Hour {
		d.Bucket = strconv.Itoa(int(bucket.Hours())) + " hours"
	}
	d.Actions, d.Total = barRows(tracking.Actions, st.Totals)
	d.Deliveries, _ = barRows([]string{"delivered", "deferred", "failed", "expired"}, st.Deliveries)

	for _, b := range st.Buckets {
		var n int64
		for _, c := range b.Counts {
			n += c
		}
		d.ChartMax = max(d.ChartMax, n)
	}
	for i, b := range st.Buckets {
		lt := b.Start.Local()
		col := chartCol{}
		var parts []string
		for _, a := range tracking.Actions {
			if c := b.Counts[a]; c > 0 {
				col.Segs = append(col.Segs, chartSeg{Action: a, H: pct(c, d.ChartMax)})
				parts = append(parts, fmt.Sprintf("%s %d", a, c))
			}
		}
		if len(parts) == 0 {
			parts = []string{"no messages"}
		}
		if d.Range == "24h" {
			col.Title = lt.Format("15:04") + ": " + strings.Join(parts, ", ")
			if i%3 == 0 {
				col.Label = lt.Format("15:04")
			}
		} else {
			col.Title = lt.Format("Mon 02 15:04") + ": " + strings.Join(parts, ", ")
			if i == 0 || lt.Hour() < int(bucket.Hours()) {
				col.Label = lt.Format("Mon 02")
			}
		}
		d.Columns = append(d.Columns, col)
	}

	// Top reasons over all the domains in scope.
	type agg struct {
		n       int64
		domains []string
	}
	reasons := map[string]*agg{}
	for dom, rs := range st.Reasons {
		for _, rc := range rs {
			a := reasons[rc.Reason]
			if a == nil {
				a = &agg{}
				reasons[rc.Reason] = a
			}
			a.n += rc.Count
			a.domains = append(a.domains, dom)
		}
	}
	var top int64
	for k, a := range reasons {
		slices.Sort(a.domains)
		if len(a.domains) > 5 {
			a.domains = append(a.domains[:5], "…")
		}
		d.Reasons = append(d.Reasons, reasonRow{Reason: k, Count: a.n, Domains: strings.Join(a.domains, ", ")})
		top = max(top, a.n)
	}
	slices.SortFunc(d.Reasons, func(a, b reasonRow) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})
	if len(d.Reasons) > 10 {
		d.Reasons = d.Reasons[:10]
	}
	for i := range d.Reasons {
		d.Reasons[i].W = pct(d.Reasons[i].Count, top)
	}
	s.render(w, r, http.StatusOK, "stats", page{Title: "Statistics", Data: d})
}
