package quarantine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	htmltemplate "html/template"
	"mime"
	"mime/quotedprintable"
	"strings"
	texttemplate "text/template"
	"time"

	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

type digestItem struct {
	From, Subject, Score, Date, Reason  string
	Refused                             bool
	Release, ReleaseTeach, Allow, Block string
}

type digestData struct {
	Rcpt    string
	Count   int
	More    int
	Items   []digestItem
	UIURL   string
	Expires string
}

var digestText = texttemplate.Must(texttemplate.New("t").Parse(`Moat held {{.Count}} new message{{if ne .Count 1}}s{{end}} for {{.Rcpt}}.
These messages looked suspicious and were not delivered. If one of them is
legitimate, release it with the links below (valid until {{.Expires}}).
{{range .Items}}
* {{.Subject}}
  From: {{.From}}   Date: {{.Date}}   Score: {{.Score}}{{if .Reason}} ({{.Reason}}){{end}}
  Release:                 {{.Release}}
  Release, not spam:       {{.ReleaseTeach}}
  Always allow sender:     {{.Allow}}
  Block sender:            {{.Block}}
{{end}}{{if .More}}
... and {{.More}} more.{{end}}
Review all held mail: {{.UIURL}}
`))

var digestHTML = htmltemplate.Must(htmltemplate.New("h").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Quarantine digest</title></head>
<body style="margin:0;padding:24px;background:#f4f6f8;font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1f2933">
<table role="presentation" width="100%" style="max-width:720px;margin:0 auto;background:#fff;border-radius:8px;border:1px solid #d9e2ec">
<tr><td style="padding:20px 24px;border-bottom:1px solid #d9e2ec">
<div style="font-size:20px;font-weight:600;color:#102a43">Moat quarantine</div>
<div style="color:#52606d;margin-top:4px">{{.Count}} new held message{{if ne .Count 1}}s{{end}} for <b>{{.Rcpt}}</b></div>
</td></tr>
{{range .Items}}<tr><td style="padding:14px 24px;border-bottom:1px solid #eef2f5">
<div style="font-weight:600">{{.Subject}}</div>
<div style="color:#52606d;font-size:13px;margin:2px 0 8px">{{.From}} &middot; {{.Date}} &middot; score {{.Score}}{{if .Reason}} &middot; {{.Reason}}{{end}}</div>
<a href="{{.Release}}" style="display:inline-block;padding:6px 12px;margin:0 6px 4px 0;background:#1f6feb;color:#fff;border-radius:4px;text-decoration:none;font-size:13px">Release</a>
<a href="{{.ReleaseTeach}}" style="display:inline-block;padding:6px 12px;margin:0 6px 4px 0;background:#2f855a;color:#fff;border-radius:4px;text-decoration:none;font-size:13px">Release &amp; not spam</a>
<a href="{{.Allow}}" style="display:inline-block;padding:6px 12px;margin:0 6px 4px 0;border:1px solid #9fb3c8;color:#243b53;border-radius:4px;text-decoration:none;font-size:13px">Always allow sender</a>
<a href="{{.Block}}" style="display:inline-block;padding:6px 12px;margin:0 6px 4px 0;border:1px solid #e12d39;color:#ab091e;border-radius:4px;text-decoration:none;font-size:13px">Block sender</a>
</td></tr>{{end}}
<tr><td style="padding:16px 24px;color:#52606d;font-size:13px">{{if .More}}&hellip; and {{.More}} more. {{end}}Links are valid until {{.Expires}} and work once.
<a href="{{.UIURL}}">Review all held mail</a>.</td></tr>
</table></body></html>
`))

func qp(s string) string {
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	w.Write([]byte(strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")))
	w.Close()
	return b.String()
}

func displayFrom(e *Entry) string {
	if e.HeaderFrom != "" {
		return e.HeaderFrom
	}
	if e.From == "" {
		return "<>"
	}
	return e.From
}

func reasonSummary(r []verdict.Symbol) string {
	best := -1
	for i, s := range r {
		if best < 0 || s.Score > r[best].Score {
			best = i
		}
	}
	if best < 0 {
		return ""
	}
	return r[best].Name
}

// BuildDigest renders the digest email for one recipient listing entries
// (the caller chose them). It returns the complete RFC 5322 message.
func (s *Store) BuildDigest(rcpt string, entries []*Entry, total int) []byte {
	now := s.now()
	exp := now.Add(s.cfg.LinkTTL)
	base := strings.TrimRight(s.cfg.BaseURL, "/")
	link := func(a LinkAction, e *Entry) string {
		return base + "/l/" + s.SignLink(Link{Action: a, EntryID: e.ID, Rcpt: e.Rcpt, Expires: exp})
	}
	d := digestData{Rcpt: rcpt, Count: total, More: total - len(entries), UIURL: base + "/quarantine",
		Expires: exp.UTC().Format("2006-01-02 15:04 MST")}
	for _, e := range entries {
		subj := e.Subject
		if subj == "" {
			subj = "(no subject)"
		}
		d.Items = append(d.Items, digestItem{
			From: displayFrom(e), Subject: subj, Score: verdict.FormatScore(e.Score),
			Date: e.Received.UTC().Format("2006-01-02 15:04 MST"), Reason: reasonSummary(e.Reasons), Refused: e.Refused,
			Release: link(LinkRelease, e), ReleaseTeach: link(LinkReleaseTeach, e), Allow: link(LinkAllow, e), Block: link(LinkBlock, e),
		})
	}
	var txt, html bytes.Buffer
	digestText.Execute(&txt, d)
	digestHTML.Execute(&html, d)
	rb := make([]byte, 12)
	rand.Read(rb)
	boundary := "moat-" + hex.EncodeToString(rb)
	fromDomain := domainOf(s.cfg.DigestFrom)
	var m bytes.Buffer
	fmt.Fprintf(&m, "From: Moat quarantine <%s>\r\n", s.cfg.DigestFrom)
	fmt.Fprintf(&m, "To: <%s>\r\n", rcpt)
	fmt.Fprintf(&m, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", fmt.Sprintf("Quarantine: %d new held message%s", total, map[bool]string{true: "", false: "s"}[total == 1])))
	fmt.Fprintf(&m, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&m, "Message-ID: <digest.%s@%s>\r\n", hex.EncodeToString(rb[:8]), fromDomain)
	m.WriteString("Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&m, "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&m, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n%s\r\n", boundary, qp(txt.String()))
	fmt.Fprintf(&m, "--%s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n%s\r\n", boundary, qp(html.String()))
	fmt.Fprintf(&m, "--%s--\r\n", boundary)
	return m.Bytes()
}

// SendDigests queues one digest per recipient that has held mail not yet
// listed in a digest, and marks those entries as listed. It returns the
// number of digests queued.
func (s *Store) SendDigests(ctx context.Context) (int, error) {
	if s.enq == nil || s.cfg.BaseURL == "" {
		return 0, nil
	}
	rows, err := s.db.QueryContext(ctx, s.q.digestRcpts)
	if err != nil {
		return 0, err
	}
	var rcpts []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			rows.Close()
			return 0, err
		}
		rcpts = append(rcpts, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	sent := 0
	for _, r := range rcpts {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		if err := s.digestOne(ctx, r); err != nil {
			return sent, fmt.Errorf("digest for %s: %w", r, err)
		}
		sent++
	}
	return sent, nil
}

func (s *Store) digestOne(ctx context.Context, rcpt string) error {
	rows, err := s.db.QueryContext(ctx, s.q.digestEntries, rcpt)
	if err != nil {
		return err
	}
	var all []*Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			rows.Close()
			return err
		}
		all = append(all, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if len(all) == 0 {
		return nil
	}
	shown := all[:min(len(all), s.cfg.DigestMaxEntries)]
	msg := s.BuildDigest(rcpt, shown, len(all))
	env := &queue.Envelope{
		From:     s.cfg.DigestFrom,
		Rcpts:    []queue.RcptState{{Addr: rcpt, Domain: domainOf(rcpt), Status: "pending"}},
		Received: s.now(),
		Client:   queue.ClientInfo{IP: "127.0.0.1", Helo: "localhost", Proto: "ESMTP"},
		Size:     int64(len(msg)),
		EightBit: has8bit(msg),
	}
	if _, err := s.enq.Enqueue(env, bytes.NewReader(msg)); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, e := range all {
		if _, err := tx.ExecContext(ctx, s.q.digested, e.ID); err != nil {
			return err
		}
	}
	s.mDigests.Inc()
	return tx.Commit()
}
