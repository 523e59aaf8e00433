package quarantine

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"
)

// Prefs are per-recipient sender allow and block lists, set from the UI
// ("always allow this sender", "block sender") and read by the allow/block
// list check. A sender is an address or "@domain".
type Prefs struct {
	db  *sql.DB
	q   *queries
	now func() time.Time
}

// NewPrefs returns the preference table on an SQLite db (Migrate must
// have run).
func NewPrefs(db *sql.DB) *Prefs { return NewPrefsDriver(db, "sqlite") }

// NewPrefsDriver returns the preference table on db for driver ("sqlite"
// or "postgres"; MigrateDriver must have run).
func NewPrefsDriver(db *sql.DB, driver string) *Prefs {
	return &Prefs{db: db, q: newQueries(driver), now: time.Now}
}

// Pref kinds.
const (
	Allow = "allow"
	Block = "block"
)

func normSender(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func (p *Prefs) set(ctx context.Context, rcpt, sender, kind, by string) error {
	rcpt, sender = normSender(rcpt), normSender(sender)
	if rcpt == "" || sender == "" {
		return errors.New("quarantine: empty recipient or sender")
	}
	_, err := p.db.ExecContext(ctx, p.q.setPref,
		rcpt, sender, kind, p.now().Unix(), by)
	if err == nil {
		p.q.audit(ctx, p.db, p.now(), "", "", kind+"_sender", by, rcpt+" "+sender)
	}
	return err
}

// AllowSender always lets mail from sender through for rcpt.
func (p *Prefs) AllowSender(ctx context.Context, rcpt, sender, by string) error {
	return p.set(ctx, rcpt, sender, Allow, by)
}

// BlockSender always refuses mail from sender for rcpt.
func (p *Prefs) BlockSender(ctx context.Context, rcpt, sender, by string) error {
	return p.set(ctx, rcpt, sender, Block, by)
}

// Remove forgets the preference for a sender.
func (p *Prefs) Remove(ctx context.Context, rcpt, sender string) error {
	_, err := p.db.ExecContext(ctx, p.q.delPref, normSender(rcpt), normSender(sender))
	return err
}

// Lookup returns Allow, Block or "" for mail from sender to rcpt. An exact
// sender address wins over its "@domain"; a block wins over an allow at
// the same level.
func (p *Prefs) Lookup(ctx context.Context, rcpt, sender string) (string, error) {
	rcpt, sender = normSender(rcpt), normSender(sender)
	if sender == "" {
		return "", nil
	}
	cands := []string{sender}
	if d := domainOf(sender); d != "" {
		cands = append(cands, "@"+d)
	}
	for _, c := range cands {
		var kind string
		err := p.db.QueryRowContext(ctx, p.q.lookupPref, rcpt, c).Scan(&kind)
		if err == nil {
			return kind, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", err
		}
	}
	return "", nil
}

// Pref is one stored preference.
type Pref struct {
	Rcpt, Sender, Kind, By string
	Created                time.Time
}

// List returns the preferences of one recipient.
func (p *Prefs) List(ctx context.Context, rcpt string) ([]Pref, error) {
	rows, err := p.db.QueryContext(ctx, p.q.listPrefs, normSender(rcpt))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pref
	for rows.Next() {
		var x Pref
		var c int64
		if err := rows.Scan(&x.Rcpt, &x.Sender, &x.Kind, &x.By, &c); err != nil {
			return nil, err
		}
		x.Created = time.Unix(c, 0)
		out = append(out, x)
	}
	return out, rows.Err()
}
