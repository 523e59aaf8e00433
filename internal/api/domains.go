package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"moat.dev/moat/internal/store/sqlstore"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/store"
)

// DomainJSON is a domain as the API reads and writes it.
type DomainJSON struct {
	Name    string `json:"name"`
	Partner string `json:"partner"`
	// Backends are "host:port" (port 25 if omitted; "[v6]:port").
	Backends      []string `json:"backends"`
	TLS           string   `json:"tls"`            // opportunistic (default), required, none
	MaxConns      int      `json:"max_conns"`      // per backend; 0 = the relay's default
	RecipientMode string   `json:"recipient_mode"` // callout (default), table, any
	CatchAll      bool     `json:"catch_all"`
	// Policy overrides parts of the site policy (see PolicyJSON); absent
	// or null = the site policy.
	Policy json.RawMessage `json:"policy,omitempty"`
}

// PolicyJSON is a domain's policy override, with the same keys as the
// policy section of the configuration file. Keys left out are inherited
// from the site policy.
type PolicyJSON struct {
	Layers          map[string]LayerJSON `json:"layers,omitempty"`
	TagScore        *float64             `json:"tag_score,omitempty"`
	QuarantineScore *float64             `json:"quarantine_score,omitempty"`
	RejectScore     *float64             `json:"reject_score,omitempty"`
	Appeal          *string              `json:"appeal,omitempty"`
	SubjectTag      *string              `json:"subject_tag,omitempty"`
}

// LayerJSON is the policy of one check.
type LayerJSON struct {
	Mode      string  `json:"mode,omitempty"`     // reject, tempfail, flag, off
	Observe   bool    `json:"observe,omitempty"`  // log what would happen, change nothing
	OnError   string  `json:"on_error,omitempty"` // tempfail, ignore
	FlagScore float64 `json:"flag_score,omitempty"`
}

// storedPolicy is the override as kept in store.Domain.Policy: Go field
// names, which is what the SMTP path's domain cache json.Unmarshals over
// a copy of the site policy (and what the config loader writes), so only
// the keys present override.
type storedPolicy struct {
	Layers          map[string]policy.Layer `json:",omitempty"`
	TagScore        *float64                `json:",omitempty"`
	QuarantineScore *float64                `json:",omitempty"`
	RejectScore     *float64                `json:",omitempty"`
	Appeal          *string                 `json:",omitempty"`
	SubjectTag      *string                 `json:",omitempty"`
}

var layerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// parsePolicy decodes and validates an override given as JSON; it returns
// the stored form ("" for no override).
func parsePolicy(raw json.RawMessage, site *policy.Policy) (string, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return "", nil
	}
	// Layers are decoded one by one so that errors name the layer.
	var top struct {
		PolicyJSON
		Layers map[string]json.RawMessage `json:"layers,omitempty"`
	}
	if err := decodeStrict(bytes.NewReader(raw), &top); err != nil {
		return "", prefixErr("policy", err)
	}
	pj := top.PolicyJSON
	pj.Layers = nil
	for name, lraw := range top.Layers {
		var l LayerJSON
		if err := decodeStrict(bytes.NewReader(lraw), &l); err != nil {
			return "", prefixErr("policy.layers."+name, err)
		}
		if pj.Layers == nil {
			pj.Layers = map[string]LayerJSON{}
		}
		pj.Layers[name] = l
	}
	sp := storedPolicy{TagScore: pj.TagScore, QuarantineScore: pj.QuarantineScore, RejectScore: pj.RejectScore, Appeal: pj.Appeal, SubjectTag: pj.SubjectTag}
	eff := *site
	eff.Layers = map[string]policy.Layer{}
	for k, v := range site.Layers {
		eff.Layers[k] = v
	}
	if len(pj.Layers) > 0 {
		sp.Layers = map[string]policy.Layer{}
	}
	for name, l := range pj.Layers {
		if !layerNameRE.MatchString(name) {
			return "", badRequest("policy.layers: %q is not a check name", name)
		}
		if l.FlagScore < -1000 || l.FlagScore > 1000 {
			return "", badRequest("policy.layers.%s.flag_score: must be between -1000 and 1000", name)
		}
		pl := policy.Layer{Mode: policy.Mode(l.Mode), Observe: l.Observe, OnError: l.OnError, FlagScore: l.FlagScore}
		sp.Layers[name] = pl
		eff.Layers[name] = pl
	}
	if pj.Appeal != nil && len(*pj.Appeal) > 500 {
		return "", badRequest("policy.appeal: at most 500 characters")
	}
	if pj.Appeal != nil && strings.ContainsAny(*pj.Appeal, "\r\n") {
		return "", badRequest("policy.appeal: must be one line")
	}
	for _, s := range []struct {
		name string
		v    *float64
		dst  *float64
	}{{"tag_score", pj.TagScore, &eff.TagScore}, {"quarantine_score", pj.QuarantineScore, &eff.QuarantineScore}, {"reject_score", pj.RejectScore, &eff.RejectScore}} {
		if s.v != nil {
			if *s.v < -1000 || *s.v > 1000 {
				return "", badRequest("policy.%s: must be between -1000 and 1000", s.name)
			}
			*s.dst = *s.v
		}
	}
	if pj.Appeal != nil {
		eff.Appeal = *pj.Appeal
	}
	if pj.SubjectTag != nil {
		eff.SubjectTag = *pj.SubjectTag
	}
	if err := eff.Validate(); err != nil {
		return "", badRequest("policy.%v", err)
	}
	if sp.Layers == nil && sp.TagScore == nil && sp.QuarantineScore == nil && sp.RejectScore == nil && sp.Appeal == nil && sp.SubjectTag == nil {
		return "", nil
	}
	b, err := json.Marshal(sp)
	return string(b), err
}

// policyOut converts the stored override to its API form (nil for none).
func policyOut(stored string) (*PolicyJSON, error) {
	if strings.TrimSpace(stored) == "" {
		return nil, nil
	}
	var sp storedPolicy
	if err := json.Unmarshal([]byte(stored), &sp); err != nil {
		return nil, fmt.Errorf("stored policy: %w", err)
	}
	pj := &PolicyJSON{TagScore: sp.TagScore, QuarantineScore: sp.QuarantineScore, RejectScore: sp.RejectScore, Appeal: sp.Appeal, SubjectTag: sp.SubjectTag}
	if len(sp.Layers) > 0 {
		pj.Layers = map[string]LayerJSON{}
		for k, l := range sp.Layers {
			pj.Layers[k] = LayerJSON{Mode: string(l.Mode), Observe: l.Observe, OnError: l.OnError, FlagScore: l.FlagScore}
		}
	}
	return pj, nil
}

func prefixErr(prefix string, err error) error {
	var he *httpError
	if errors.As(err, &he) && he.status == http.StatusBadRequest {
		msg := strings.TrimPrefix(he.msg, "request body ")
		if strings.Contains(msg, ": ") && !strings.HasPrefix(msg, "invalid JSON") && !strings.HasPrefix(msg, "must be") {
			return badRequest("%s.%s", prefix, msg)
		}
		return badRequest("%s: %s", prefix, msg)
	}
	return err
}

var hostRE = regexp.MustCompile(`^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$`)

// normName lower-cases a domain name and drops a trailing dot.
func normName(s string) string { return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), ".")) }

// parseDomain validates a request body into a store.Domain. It is the
// request decoder FuzzDomainJSON exercises.
func parseDomain(body io.Reader, site *policy.Policy) (*store.Domain, error) {
	var in DomainJSON
	if err := decodeStrict(body, &in); err != nil {
		return nil, err
	}
	return validateDomain(&in, site)
}

func validateDomain(in *DomainJSON, site *policy.Policy) (*store.Domain, error) {
	name := normName(in.Name)
	if name == "" {
		return nil, badRequest("name: required")
	}
	if len(name) > 253 || !domainRE.MatchString(name) {
		return nil, badRequest("name: %q is not a valid domain name", in.Name)
	}
	d := &store.Domain{Name: name, Partner: in.Partner, TLS: in.TLS, MaxConns: in.MaxConns, RecipientMode: in.RecipientMode, CatchAll: in.CatchAll}
	if d.Partner != "" && !partnerRE.MatchString(d.Partner) {
		return nil, badRequest("partner: %q: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)", in.Partner)
	}
	if len(in.Backends) == 0 {
		return nil, badRequest("backends: at least one backend host:port is required")
	}
	if len(in.Backends) > 16 {
		return nil, badRequest("backends: at most 16 backends")
	}
	for i, s := range in.Backends {
		b, err := store.ParseBackend(s)
		if err != nil {
			msg := err.Error()
			if strings.HasPrefix(msg, "backend \"") {
				if j := strings.Index(msg, "\": "); j > 0 {
					msg = msg[j+3:]
				}
			}
			return nil, badRequest("backends[%d]: %s", i, msg)
		}
		if _, err := netip.ParseAddr(b.Host); err != nil && (len(b.Host) > 253 || !hostRE.MatchString(b.Host)) {
			return nil, badRequest("backends[%d]: host %q is not a host name or IP address", i, b.Host)
		}
		for j := range d.Backends {
			if d.Backends[j] == b {
				return nil, badRequest("backends[%d]: duplicate of backends[%d]", i, j)
			}
		}
		d.Backends = append(d.Backends, b)
	}
	switch d.TLS {
	case "":
		d.TLS = "opportunistic"
	case "opportunistic", "required", "none":
	default:
		return nil, badRequest("tls: %q is not one of opportunistic, required, none", in.TLS)
	}
	if d.MaxConns < 0 || d.MaxConns > 10000 {
		return nil, badRequest("max_conns: must be 0-10000 (0 = default)")
	}
	switch d.RecipientMode {
	case "":
		d.RecipientMode = store.RecipientsCallout
	case store.RecipientsTable, store.RecipientsCallout, store.RecipientsAny:
	default:
		return nil, badRequest("recipient_mode: %q is not one of table, callout, any", in.RecipientMode)
	}
	pol, err := parsePolicy(in.Policy, site)
	if err != nil {
		return nil, err
	}
	d.Policy = pol
	return d, nil
}

// domainJSON converts a stored domain to its API form.
func domainJSON(d *store.Domain) (*DomainJSON, error) {
	out := &DomainJSON{Name: d.Name, Partner: d.Partner, Backends: []string{}, TLS: d.TLS, MaxConns: d.MaxConns,
		RecipientMode: d.RecipientMode, CatchAll: d.CatchAll}
	for _, b := range d.Backends {
		out.Backends = append(out.Backends, b.String())
	}
	pj, err := policyOut(d.Policy)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", d.Name, err)
	}
	if pj != nil {
		raw, err := json.Marshal(pj)
		if err != nil {
			return nil, err
		}
		out.Policy = raw
	}
	return out, nil
}

// --- access ---

func (p *principal) canSee(d *store.Domain) bool {
	switch p.kind {
	case RoleSite:
		return true
	case rolePartner:
		return d.Partner == p.name
	case roleDomain:
		return d.Name == p.name
	}
	return false
}

var errDomainNotFound = &httpError{status: http.StatusNotFound, msg: "domain not found"}

// domain loads a domain the caller may see (404 otherwise).
func (a *API) domain(ctx context.Context, p *principal, name string) (*store.Domain, error) {
	name = normName(name)
	if !domainRE.MatchString(name) {
		return nil, errDomainNotFound
	}
	d, err := a.st.Domain(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errDomainNotFound
	}
	if err != nil {
		return nil, err
	}
	if !p.canSee(d) {
		return nil, errDomainNotFound
	}
	return d, nil
}

// pathDomain returns the domain named by the URL's {name} (see domain); on
// failure it writes the error response and returns false.
func (a *API) pathDomain(w http.ResponseWriter, r *http.Request, p *principal) (*store.Domain, bool) {
	d, err := a.domain(r.Context(), p, r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return nil, false
	}
	return d, true
}

// saveDomain stores d and records action on it in the audit log; on
// failure it writes the error response and returns false.
func (a *API) saveDomain(w http.ResponseWriter, r *http.Request, p *principal, d *store.Domain, action, detail string) bool {
	if err := a.st.PutDomain(r.Context(), d); err != nil {
		a.internal(w, r, err)
		return false
	}
	a.audit(r, p, action, d.Name, detail)
	return true
}

// scope returns the domains the caller may see; scoped is false for site
// tokens (everything).
func (a *API) scope(ctx context.Context, p *principal) (scoped bool, domains []string, err error) {
	switch p.kind {
	case RoleSite:
		return false, nil, nil
	case roleDomain:
		return true, []string{p.name}, nil
	}
	all, err := a.st.Domains(ctx)
	if err != nil {
		return true, nil, err
	}
	for i := range all {
		if p.canSee(&all[i]) {
			domains = append(domains, all[i].Name)
		}
	}
	return true, domains, nil
}

// --- domain handlers ---

func (a *API) listDomains(w http.ResponseWriter, r *http.Request, p *principal) {
	limit, err := a.limit(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	cursor := r.URL.Query().Get("cursor")
	partner := r.URL.Query().Get("partner")
	all, err := a.st.Domains(r.Context())
	if err != nil {
		a.internal(w, r, err)
		return
	}
	out := list[*DomainJSON]{Items: []*DomainJSON{}}
	for i := range all {
		d := &all[i]
		if !p.canSee(d) || d.Name <= cursor || (partner != "" && d.Partner != partner) {
			continue
		}
		if len(out.Items) == limit {
			out.Next = out.Items[len(out.Items)-1].Name
			break
		}
		j, err := domainJSON(d)
		if err != nil {
			a.internal(w, r, err)
			return
		}
		out.Items = append(out.Items, j)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getDomain(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	j, err := domainJSON(d)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// ownPartner applies the partner rules: a partner token's domains belong
// to it ("" means its own), other partners are refused.
func ownPartner(p *principal, d *store.Domain) error {
	if p.kind != rolePartner {
		return nil
	}
	if d.Partner == "" {
		d.Partner = p.name
	}
	if d.Partner != p.name {
		return &httpError{status: http.StatusForbidden, msg: fmt.Sprintf("partner: a token of partner %q can only manage domains of partner %q", p.name, p.name)}
	}
	return nil
}

// domainInput validates a domain sent by p and applies partner ownership
// (see ownPartner).
func (a *API) domainInput(p *principal, in *DomainJSON) (*store.Domain, error) {
	d, err := validateDomain(in, a.deps.SitePolicy)
	if err != nil {
		return nil, err
	}
	if err := ownPartner(p, d); err != nil {
		return nil, err
	}
	return d, nil
}

func (a *API) createDomain(w http.ResponseWriter, r *http.Request, p *principal) {
	if p.kind == roleDomain {
		writeError(w, http.StatusForbidden, "domain tokens cannot create domains")
		return
	}
	var in DomainJSON
	if !a.bindJSON(w, r, &in) {
		return
	}
	d, err := a.domainInput(p, &in)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	switch _, err := a.st.Domain(r.Context(), d.Name); {
	case err == nil:
		writeError(w, http.StatusConflict, "name: domain %s already exists", d.Name)
		return
	case !errors.Is(err, store.ErrNotFound):
		a.internal(w, r, err)
		return
	}
	if !a.saveDomain(w, r, p, d, "domain.create", domainSummary(d)) {
		return
	}
	a.respondDomain(w, r, http.StatusCreated, d.Name)
}

func (a *API) respondDomain(w http.ResponseWriter, r *http.Request, status int, name string) {
	d, err := a.st.Domain(r.Context(), name)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	j, err := domainJSON(d)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	if status == http.StatusCreated {
		w.Header().Set("Location", Prefix+"domains/"+d.Name)
	}
	writeJSON(w, status, j)
}

func domainSummary(d *store.Domain) string {
	j, err := domainJSON(d)
	if err != nil {
		return ""
	}
	b, _ := json.Marshal(j)
	return string(b)
}

// sameExceptPolicy reports whether a and b differ only in their policy.
func sameExceptPolicy(a, b *store.Domain) bool {
	return a.Name == b.Name && a.Partner == b.Partner && slices.Equal(a.Backends, b.Backends) && a.TLS == b.TLS &&
		a.MaxConns == b.MaxConns && a.RecipientMode == b.RecipientMode && a.CatchAll == b.CatchAll
}

func (a *API) putDomain(w http.ResponseWriter, r *http.Request, p *principal) {
	cur, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	var in DomainJSON
	if !a.bindJSON(w, r, &in) {
		return
	}
	if in.Name == "" {
		in.Name = cur.Name
	} else if normName(in.Name) != cur.Name {
		writeError(w, http.StatusBadRequest, "name: %q does not match the URL (%s); domains cannot be renamed", in.Name, cur.Name)
		return
	}
	d, err := a.domainInput(p, &in)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if p.kind == roleDomain && !sameExceptPolicy(d, cur) {
		writeError(w, http.StatusForbidden, "domain tokens may change only the policy and the recipients of their domain")
		return
	}
	if !a.saveDomain(w, r, p, d, "domain.update", domainSummary(d)) {
		return
	}
	a.respondDomain(w, r, http.StatusOK, d.Name)
}

func (a *API) deleteDomain(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	if p.kind == roleDomain {
		writeError(w, http.StatusForbidden, "domain tokens cannot delete domains")
		return
	}
	err := a.st.DeleteDomain(r.Context(), d.Name)
	if errors.Is(err, store.ErrNotFound) {
		a.fail(w, r, errDomainNotFound)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	// The domain's tokens go with it: a domain of the same name created
	// later (perhaps for another partner) must not be reachable with them.
	if _, err := a.st.DB().ExecContext(r.Context(), sqlstore.Rebind(a.st.Driver(), `DELETE FROM api_tokens WHERE role = ?`), "domain:"+d.Name); err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "domain.delete", d.Name, "")
	writeJSON(w, http.StatusNoContent, nil)
}

// --- policy ---

func (a *API) getPolicy(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	pj, err := policyOut(d.Policy)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	if pj == nil {
		pj = &PolicyJSON{}
	}
	writeJSON(w, http.StatusOK, pj)
}

func (a *API) putPolicy(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	var raw json.RawMessage
	if !a.bindJSON(w, r, &raw) {
		return
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		writeError(w, http.StatusBadRequest, "policy: must be a JSON object")
		return
	}
	pol, err := parsePolicy(raw, a.deps.SitePolicy)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	d.Policy = pol
	if !a.saveDomain(w, r, p, d, "policy.update", pol) {
		return
	}
	a.getPolicy(w, r, p)
}

func (a *API) deletePolicy(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	d.Policy = ""
	if !a.saveDomain(w, r, p, d, "policy.delete", "") {
		return
	}
	writeJSON(w, http.StatusNoContent, nil)
}
