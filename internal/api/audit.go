package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"moat.dev/moat/internal/store"
	"moat.dev/moat/internal/store/sqlstore"
)

// AuditEntry is one state change.
type AuditEntry struct {
	Time    time.Time `json:"time"`
	TokenID string    `json:"token_id"`
	Label   string    `json:"label"` // who: the token's label ("cli" for the command line)
	Role    string    `json:"role"`
	IP      string    `json:"ip,omitempty"`
	Action  string    `json:"action"` // e.g. domain.create, recipients.replace, queue.delete
	Object  string    `json:"object"` // e.g. example.com, example.com/alice, a queue ID
	Detail  string    `json:"detail,omitempty"`
}

func writeAudit(ctx context.Context, st store.Store, now time.Time, p *principal, action, object, detail string) error {
	if len(detail) > 4000 {
		detail = detail[:4000]
	}
	_, err := st.DB().ExecContext(ctx, sqlstore.Rebind(st.Driver(),
		`INSERT INTO api_audit (ts, token_id, label, role, ip, action, object, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		now.UnixMicro(), p.tokenID, p.label, p.role, p.ip, action, object, detail)
	if err != nil {
		return fmt.Errorf("api: audit: %w", err)
	}
	return nil
}

// audit records a state change that has happened. A failure is logged and
// counted; the change stands.
func (a *API) audit(r *http.Request, p *principal, action, object, detail string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	if err := writeAudit(ctx, a.st, a.now(), p, action, object, detail); err != nil {
		a.m.auditErrors.Inc()
		a.log.Error("api: cannot write audit log", "action", action, "object", object, "token", p.label, "err", err)
	}
	a.log.Info("api: "+action, "object", object, "token_id", p.tokenID, "token", p.label, "role", p.role, "ip", p.ip)
}

// auditLog lists the audit log, newest first: ?since=, ?action= (prefix,
// e.g. "domain."), ?limit=, ?offset=.
func (a *API) auditLog(w http.ResponseWriter, r *http.Request, p *principal) {
	if !requireSite(w, p) {
		return
	}
	limit, off, err := a.page(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	since, err := parseTime("since", r.URL.Query().Get("since"), a.now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := `SELECT ts, token_id, label, role, ip, action, object, detail FROM api_audit WHERE ts >= ?`
	args := []any{since.UnixMicro()}
	if since.IsZero() {
		args[0] = int64(0)
	}
	if act := r.URL.Query().Get("action"); act != "" {
		q += ` AND action LIKE ? ESCAPE '\'`
		args = append(args, strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(act)+"%")
	}
	q += fmt.Sprintf(` ORDER BY ts DESC LIMIT %d OFFSET %d`, limit+1, off)
	rows, err := a.st.DB().QueryContext(r.Context(), sqlstore.Rebind(a.st.Driver(), q), args...)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	defer rows.Close()
	out := list[AuditEntry]{Items: []AuditEntry{}}
	for rows.Next() {
		var e AuditEntry
		var ts int64
		if err := rows.Scan(&ts, &e.TokenID, &e.Label, &e.Role, &e.IP, &e.Action, &e.Object, &e.Detail); err != nil {
			a.internal(w, r, err)
			return
		}
		e.Time = time.UnixMicro(ts).UTC()
		out.Items = append(out.Items, e)
	}
	if err := rows.Err(); err != nil {
		a.internal(w, r, err)
		return
	}
	if len(out.Items) > limit {
		out.Items = out.Items[:limit]
		out.NextOffset = off + limit
	}
	writeJSON(w, http.StatusOK, out)
}
