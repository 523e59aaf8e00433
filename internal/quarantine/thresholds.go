package quarantine

import (
	"context"
	"database/sql"
	"errors"

	"moat.dev/moat/internal/policy"
)

// SetThresholds stores rcpt's thresholds; all nil removes them.
func (p *Prefs) SetThresholds(ctx context.Context, rcpt string, t policy.Thresholds, by string) error {
	rcpt = normSender(rcpt)
	if rcpt == "" {
		return errors.New("quarantine: empty recipient")
	}
	if err := t.Validate(); err != nil {
		return err
	}
	var err error
	if t.IsZero() {
		_, err = p.db.ExecContext(ctx, p.q.delThresholds, rcpt)
	} else {
		_, err = p.db.ExecContext(ctx, p.q.setThresholds,
			rcpt, nullable(t.Tag), nullable(t.Quarantine), nullable(t.Reject), p.now().Unix(), by)
	}
	if err == nil {
		p.q.audit(ctx, p.db, p.now(), "", "", "thresholds", by, rcpt+" "+t.String())
	}
	return err
}

// Thresholds returns rcpt's thresholds (zero when none are set).
func (p *Prefs) Thresholds(ctx context.Context, rcpt string) (policy.Thresholds, error) {
	var tag, quar, rej sql.NullFloat64
	err := p.db.QueryRowContext(ctx, p.q.getThresholds, normSender(rcpt)).Scan(&tag, &quar, &rej)
	if errors.Is(err, sql.ErrNoRows) {
		return policy.Thresholds{}, nil
	}
	if err != nil {
		return policy.Thresholds{}, err
	}
	ptr := func(n sql.NullFloat64) *float64 {
		if !n.Valid {
			return nil
		}
		v := n.Float64
		return &v
	}
	return policy.Thresholds{Tag: ptr(tag), Quarantine: ptr(quar), Reject: ptr(rej)}, nil
}

func nullable(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}
