package api

import (
	"context"
	"net/http"
	"strings"

	"moat.dev/moat/internal/policy"
)

// UserSettings keeps people's own spam thresholds (package quarantine's
// Prefs, which the quarantine UI also edits).
type UserSettings interface {
	Thresholds(ctx context.Context, rcpt string) (policy.Thresholds, error)
	SetThresholds(ctx context.Context, rcpt string, t policy.Thresholds, by string) error
}

// ThresholdsJSON is one recipient's own thresholds; an absent or null
// field is the domain's.
type ThresholdsJSON struct {
	TagScore        *float64 `json:"tag_score"`
	QuarantineScore *float64 `json:"quarantine_score"`
	RejectScore     *float64 `json:"reject_score"`
}

var errNoSettings = &httpError{status: http.StatusServiceUnavailable, msg: "people's settings are not available in this process"}

// pathRecipient is the address of /domains/{name}/recipients/{local}/...,
// after the principal's access to the domain is checked.
func (a *API) pathRecipient(w http.ResponseWriter, r *http.Request, p *principal) (string, bool) {
	if a.deps.Settings == nil {
		a.fail(w, r, errNoSettings)
		return "", false
	}
	d, ok := a.pathDomain(w, r, p)
	if !ok {
		return "", false
	}
	rc, err := validateRecipient("", &RecipientJSON{Local: r.PathValue("local")}, d.Name)
	if err != nil {
		a.fail(w, r, err)
		return "", false
	}
	return rc.Local + "@" + d.Name, true
}

func (a *API) getThresholds(w http.ResponseWriter, r *http.Request, p *principal) {
	rcpt, ok := a.pathRecipient(w, r, p)
	if !ok {
		return
	}
	t, err := a.deps.Settings.Thresholds(r.Context(), rcpt)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ThresholdsJSON{TagScore: t.Tag, QuarantineScore: t.Quarantine, RejectScore: t.Reject})
}

func (a *API) putThresholds(w http.ResponseWriter, r *http.Request, p *principal) {
	rcpt, ok := a.pathRecipient(w, r, p)
	if !ok {
		return
	}
	var in ThresholdsJSON
	if !a.bindJSON(w, r, &in) {
		return
	}
	t := policy.Thresholds{Tag: in.TagScore, Quarantine: in.QuarantineScore, Reject: in.RejectScore}
	if err := t.Validate(); err != nil {
		a.fail(w, r, badRequest("%s", strings.NewReplacer("tag:", "tag_score:", "quarantine:", "quarantine_score:", "reject:", "reject_score:").Replace(err.Error())))
		return
	}
	if err := a.deps.Settings.SetThresholds(r.Context(), rcpt, t, "api:"+p.label); err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "thresholds.update", rcpt, t.String())
	a.getThresholds(w, r, p)
}

func (a *API) deleteThresholds(w http.ResponseWriter, r *http.Request, p *principal) {
	rcpt, ok := a.pathRecipient(w, r, p)
	if !ok {
		return
	}
	if err := a.deps.Settings.SetThresholds(r.Context(), rcpt, policy.Thresholds{}, "api:"+p.label); err != nil {
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, "thresholds.delete", rcpt, "")
	writeJSON(w, http.StatusNoContent, nil)
}
