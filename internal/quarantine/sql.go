package quarantine

import (
	"context"
	"fmt"
	"time"

	"moat.dev/moat/internal/store/sqlstore"
)

// queries are the quarantine's SQL statements, rebound once for the
// driver when the Store is built.
type queries struct {
	driver                                                                                                                                                                                                                                                                                                                                             string
	like                                                                                                                                                                                                                                                                                                                                               string // case-insensitive LIKE: LIKE on SQLite, ILIKE on PostgreSQL
	getSecret, putSecret, insAudit, getEntry, entriesOf, auditOf, claim, setState, unclaim, liveCopies, staleReleasing, unstick, forgetMsgs, expiring, expire, forget, forgetLinks, linkUsed, useLink, unuseLink, delPref, lookupPref, listPrefs, setPref, getThresholds, setThresholds, delThresholds, insEntry, digestRcpts, digestEntries, digested string
}

func newQueries(driver string) *queries {
	r := func(q string) string { return sqlstore.Rebind(driver, q) }
	like := "LIKE"
	if driver == "postgres" {
		like = "ILIKE"
	}
	return &queries{
		driver:         driver,
		like:           like,
		getSecret:      r(`SELECT value FROM q_meta WHERE key='link_secret'`),
		putSecret:      r(`INSERT INTO q_meta(key, value) VALUES ('link_secret', ?) ON CONFLICT DO NOTHING`),
		insAudit:       r(`INSERT INTO q_audit(at, entry_id, msg_id, action, by, detail) VALUES (?,?,?,?,?,?)`),
		getEntry:       r(`SELECT ` + entryCols + ` FROM q_entries WHERE id=?`),
		entriesOf:      r(`SELECT ` + entryCols + ` FROM q_entries WHERE msg_id=? ORDER BY id`),
		auditOf:        r(`SELECT at, entry_id, msg_id, action, by, detail FROM q_audit WHERE entry_id=? ORDER BY id`),
		claim:          r(`UPDATE q_entries SET state=?, state_by=?, state_at=? WHERE id=? AND state='held'`),
		setState:       r(`UPDATE q_entries SET state=?, state_by=?, state_at=? WHERE id=?`),
		unclaim:        r(`UPDATE q_entries SET state='held' WHERE id=? AND state='releasing'`),
		liveCopies:     r(`SELECT COUNT(*) FROM q_entries WHERE msg_id=? AND state IN ('held','releasing')`),
		expiring:       r(`SELECT id, msg_id FROM q_entries WHERE state='held' AND expires <= ?`),
		staleReleasing: r(`SELECT id, msg_id, state_by FROM q_entries WHERE state='releasing' AND state_at <= ?`),
		unstick:        r(`UPDATE q_entries SET state='held', state_by='moat', state_at=? WHERE id=? AND state='releasing' AND state_at <= ?`),
		forgetMsgs:     r(`SELECT DISTINCT msg_id FROM q_entries WHERE state IN ('released','deleted','expired') AND expires <= ?`),
		expire:         r(`UPDATE q_entries SET state='expired', state_by='moat', state_at=? WHERE id=? AND state='held'`),
		forget:         r(`DELETE FROM q_entries WHERE state IN ('released','deleted','expired') AND expires <= ?`),
		forgetLinks:    r(`DELETE FROM q_links_used WHERE expires <= ?`),
		insEntry: r(`INSERT INTO q_entries(id, msg_id, received, env_from, rcpt, rcpts, client, header_from, subject,
			size, score, action, reasons, domain, refused, prepend, state, state_by, state_at, expires)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
		linkUsed:   r(`SELECT COUNT(*) FROM q_links_used WHERE hash=?`),
		useLink:    r(`INSERT INTO q_links_used(hash, used, expires) VALUES (?,?,?) ON CONFLICT DO NOTHING`),
		unuseLink:  r(`DELETE FROM q_links_used WHERE hash=?`),
		delPref:    r(`DELETE FROM q_prefs WHERE rcpt=? AND sender=?`),
		lookupPref: r(`SELECT kind FROM q_prefs WHERE rcpt=? AND sender=?`),
		listPrefs:  r(`SELECT rcpt, sender, kind, by, created FROM q_prefs WHERE rcpt=? ORDER BY sender`),
		setPref: r(`INSERT INTO q_prefs(rcpt, sender, kind, created, by) VALUES (?,?,?,?,?)
		ON CONFLICT(rcpt, sender) DO UPDATE SET kind=excluded.kind, created=excluded.created, by=excluded.by`),
		getThresholds: r(`SELECT tag, quarantine, reject FROM q_thresholds WHERE rcpt=?`),
		setThresholds: r(`INSERT INTO q_thresholds(rcpt, tag, quarantine, reject, updated, by) VALUES (?,?,?,?,?,?)
		ON CONFLICT(rcpt) DO UPDATE SET tag=excluded.tag, quarantine=excluded.quarantine, reject=excluded.reject, updated=excluded.updated, by=excluded.by`),
		delThresholds: r(`DELETE FROM q_thresholds WHERE rcpt=?`),
		digestRcpts:   r(`SELECT DISTINCT rcpt FROM q_entries WHERE digested=0 AND state='held' ORDER BY rcpt`),
		digestEntries: r(`SELECT ` + entryCols + ` FROM q_entries WHERE rcpt=? AND digested=0 AND state='held' ORDER BY received DESC`),
		digested:      r(`UPDATE q_entries SET digested=1 WHERE id=?`),
	}
}

// rebind rewrites a statement built at run time (List).
func (q *queries) rebind(s string) string { return sqlstore.Rebind(q.driver, s) }

// b2i is how booleans are stored: INTEGER 0/1 on both drivers.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (q *queries) audit(ctx context.Context, db execer, at time.Time, entry, msg, action, by, detail string) error {
	_, err := db.ExecContext(ctx, q.insAudit, at.UnixMilli(), entry, msg, action, by, detail)
	if err != nil {
		return fmt.Errorf("quarantine: audit: %w", err)
	}
	return nil
}
