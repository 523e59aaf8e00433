package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"moat.dev/moat/internal/store"
)

// RecipientJSON is one entry of a domain's recipient table.
type RecipientJSON struct {
	Local  string `json:"local"`            // local part, without @domain
	Kind   string `json:"kind,omitempty"`   // account (default), alias, list
	Target string `json:"target,omitempty"` // for aliases: where it points (informational)
}

// MaxRecipients bounds one bulk replace.
const MaxRecipients = 200000

func validateRecipient(field string, in *RecipientJSON, domain string) (store.Recipient, error) {
	local := strings.ToLower(strings.TrimSpace(in.Local))
	switch {
	case !utf8.ValidString(in.Local):
		// Checked before ToLower, which turns invalid bytes into U+FFFD.
		return store.Recipient{}, badRequest("%slocal: %q is not valid UTF-8", field, in.Local)
	case local == "":
		return store.Recipient{}, badRequest("%slocal: required", field)
	case len(local) > 64:
		return store.Recipient{}, badRequest("%slocal: at most 64 bytes", field)
	case strings.Contains(local, "@"):
		return store.Recipient{}, badRequest("%slocal: %q is not a local part (write alice, not alice@%s)", field, in.Local, domain)
	case !utf8.ValidString(local) || strings.IndexFunc(local, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '<' || r == '>' }) >= 0:
		return store.Recipient{}, badRequest("%slocal: %q contains spaces, control characters or angle brackets", field, in.Local)
	}
	kind := in.Kind
	switch kind {
	case "":
		kind = "account"
	case "account", "alias", "list":
	default:
		return store.Recipient{}, badRequest("%skind: %q is not one of account, alias, list", field, in.Kind)
	}
	if len(in.Target) > 512 || strings.ContainsAny(in.Target, "\r\n") {
		return store.Recipient{}, badRequest("%starget: at most 512 characters, one line", field)
	}
	if kind == "alias" && strings.TrimSpace(in.Target) == "" {
		return store.Recipient{}, badRequest("%starget: required for kind alias", field)
	}
	return store.Recipient{Domain: domain, Local: local, Kind: kind, Target: strings.TrimSpace(in.Target)}, nil
}

func recipientJSON(r store.Recipient) RecipientJSON {
	return RecipientJSON{Local: r.Local, Kind: r.Kind, Target: r.Target}
}

func (a *API) listRecipients(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	limit, err := a.limit(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	cursor := r.URL.Query().Get("cursor")
	all, err := a.st.Recipients(r.Context(), d.Name)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	out := list[RecipientJSON]{Items: []RecipientJSON{}}
	for _, rc := range all {
		if rc.Local <= cursor {
			continue
		}
		if len(out.Items) == limit {
			out.Next = out.Items[len(out.Items)-1].Local
			break
		}
		out.Items = append(out.Items, recipientJSON(rc))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getRecipient(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	local := strings.ToLower(r.PathValue("local"))
	all, err := a.st.Recipients(r.Context(), d.Name)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	for _, rc := range all {
		if rc.Local == local {
			writeJSON(w, http.StatusOK, recipientJSON(rc))
			return
		}
	}
	writeError(w, http.StatusNotFound, "recipient not found")
}

func (a *API) addRecipient(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	var in RecipientJSON
	if !a.bindJSON(w, r, &in) {
		return
	}
	rc, err := validateRecipient("", &in, d.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	exists, err := a.st.RecipientExists(r.Context(), d.Name, rc.Local)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	if exists {
		writeError(w, http.StatusConflict, "local: %s@%s already exists", rc.Local, d.Name)
		return
	}
	if err := a.st.PutRecipient(r.Context(), rc); err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "recipient.create", d.Name+"/"+rc.Local, "kind="+rc.Kind+" target="+rc.Target)
	w.Header().Set("Location", Prefix+"domains/"+d.Name+"/recipients/"+url.PathEscape(rc.Local))
	writeJSON(w, http.StatusCreated, recipientJSON(rc))
}

func (a *API) deleteRecipient(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	local := strings.ToLower(r.PathValue("local"))
	err := a.st.DeleteRecipient(r.Context(), d.Name, local)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "recipient not found")
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "recipient.delete", d.Name+"/"+local, "")
	writeJSON(w, http.StatusNoContent, nil)
}

// replaceResult is the answer to a bulk replace.
type replaceResult struct {
	Total   int `json:"total"`
	Added   int `json:"added"`
	Updated int `json:"updated"`
	Removed int `json:"removed"`
}

// replaceRecipients replaces the domain's table with the list in the body.
// The whole list is validated first, then written in one transaction
// (store.ReplaceRecipients): a failure changes nothing, and of two
// concurrent replacements one wins whole.
func (a *API) replaceRecipients(w http.ResponseWriter, r *http.Request, p *principal) {
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return
	}
	var in []RecipientJSON
	if !a.bindJSON(w, r, &in) {
		return
	}
	if in == nil {
		writeError(w, http.StatusBadRequest, "request body must be a JSON array of recipients ([] empties the table)")
		return
	}
	if len(in) > MaxRecipients {
		writeError(w, http.StatusBadRequest, "at most %d recipients per request", MaxRecipients)
		return
	}
	want := make(map[string]store.Recipient, len(in))
	order := make([]string, 0, len(in))
	for i := range in {
		rc, err := validateRecipient(fmt.Sprintf("[%d].", i), &in[i], d.Name)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if _, dup := want[rc.Local]; dup {
			writeError(w, http.StatusBadRequest, "[%d].local: %q is listed twice", i, rc.Local)
			return
		}
		want[rc.Local] = rc
		order = append(order, rc.Local)
	}
	list := make([]store.Recipient, 0, len(order))
	for _, local := range order {
		list = append(list, want[local])
	}
	var res replaceResult
	res.Total = len(want)
	var err error
	if res.Added, res.Updated, res.Removed, err = a.st.ReplaceRecipients(r.Context(), d.Name, list); err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "recipients.replace", d.Name, fmt.Sprintf("total=%d added=%d updated=%d removed=%d", res.Total, res.Added, res.Updated, res.Removed))
	writeJSON(w, http.StatusOK, res)
}
