package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

const (
	dsnFailed  = "failed"
	dsnDelayed = "delayed"
	// maxDSNHeaders bounds the original header copied into a DSN.
	maxDSNHeaders = 64 << 10
)

// sendDSN queues an RFC 3464 delivery status notification to env.From for
// rcpts (all failed, or all delayed).
func (q *Queue) sendDSN(env *Envelope, dir string, rcpts []RcptState, action string, now time.Time) error {
	hdr, err := q.originalHeader(path(dir, env.ID, ".eml"), env.Size)
	if err != nil {
		// Still tell the sender; the header part then says why it is empty.
		q.log.Warn("queue: cannot read original header for DSN", "queue_id", env.ID, "err", err)
		hdr = nil
	}
	body := buildDSN(q.cfg, env, rcpts, action, hdr, now)
	dsn := &Envelope{
		From:     "",
		Rcpts:    []RcptState{{Addr: env.From, Domain: ""}},
		Received: now,
		IsDSN:    true,
		EightBit: !isASCII(body),
		SMTPUTF8: !isASCII([]byte(env.From)),
		Client:   ClientInfo{Proto: "local"},
	}
	id, err := q.Enqueue(dsn, bytes.NewReader(body))
	if err != nil {
		return err
	}
	q.m.dsns.WithLabelValues(action).Inc()
	q.log.Info("queue: DSN queued", "queue_id", env.ID, "dsn_id", id, "action", action, "to", env.From, "rcpts", len(rcpts))
	return nil
}

// originalHeader returns the message's header section with CRLF line
// endings, at most maxDSNHeaders bytes, cut at a line end.
func (q *Queue) originalHeader(name string, size int64) ([]byte, error) {
	f, err := q.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readHeader(io.LimitReader(f, size))
}

func readHeader(r io.Reader) ([]byte, error) {
	br := bufio.NewReader(io.LimitReader(r, maxDSNHeaders))
	var out bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			break // drop a partial last line (truncated, or no body)
		}
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break // end of header
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	return out.Bytes(), nil
}

func buildDSN(cfg Config, env *Envelope, rcpts []RcptState, action string, hdr []byte, now time.Time) []byte {
	host := cfg.Hostname
	boundary := "=_moat_" + newID(now)
	date := now.Format(time.RFC1123Z)
	var b bytes.Buffer
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\r\n", a...) }

	subject := "Undelivered Mail Returned to Sender"
	if action == dsnDelayed {
		subject = "Delayed Mail (still being retried)"
	}
	w("From: Mail Delivery System <MAILER-DAEMON@%s>", host)
	w("To: <%s>", env.From)
	w("Subject: %s", subject)
	w("Date: %s", date)
	w("Message-ID: <%s.dsn@%s>", newID(now), host)
	w("Auto-Submitted: auto-replied")
	w("MIME-Version: 1.0")
	w("Content-Type: multipart/report; report-type=delivery-status;")
	w("\tboundary=\"%s\"", boundary)
	w("")
	w("This is a MIME-encapsulated message.")
	w("")

	// Human-readable part.
	w("--%s", boundary)
	w("Content-Type: text/plain; charset=us-ascii")
	w("Content-Description: Notification")
	w("")
	w("This is the mail system at host %s.", host)
	w("")
	if action == dsnFailed {
		w("I'm sorry to have to inform you that your message could not")
		w("be delivered to one or more recipients. The details are below.")
	} else {
		w("Your message has not been delivered yet to the recipients below;")
		w("delivery has been delayed for %s. The mail system will keep trying", now.Sub(env.Received).Round(time.Minute))
		w("until %s.", env.Received.Add(cfg.MaxLifetime.D()).Format(time.RFC1123Z))
		w("")
		w("This is only a warning; you do not need to send the message again.")
	}
	w("")
	w("Queue ID: %s", env.ID)
	w("")
	for _, r := range rcpts {
		reason := r.LastReply
		if r.Expired {
			reason = "delivery time expired; last error: " + reason
		}
		if reason == "" {
			reason = "no reply"
		}
		w("<%s>: %s", r.Addr, sanitizeLine(reason))
	}
	w("")

	// Machine-readable part.
	w("--%s", boundary)
	w("Content-Type: message/delivery-status")
	w("Content-Description: Delivery report")
	w("")
	w("Reporting-MTA: dns; %s", host)
	w("X-Moat-Queue-ID: %s", env.ID)
	w("Arrival-Date: %s", env.Received.Format(time.RFC1123Z))
	for _, r := range rcpts {
		w("")
		w("Final-Recipient: rfc822; %s", r.Addr)
		w("Action: %s", action)
		status := r.DSNStatus
		if status == "" {
			if action == dsnFailed {
				status = "5.0.0"
			} else {
				status = "4.0.0"
			}
		}
		w("Status: %s", status)
		if r.Host != "" {
			w("Remote-MTA: dns; %s", sanitizeLine(mtaName(r.Host)))
		}
		if r.LastReply != "" {
			w("Diagnostic-Code: smtp; %s", sanitizeLine(r.LastReply))
		}
		if !r.LastAttempt.IsZero() {
			w("Last-Attempt-Date: %s", r.LastAttempt.Format(time.RFC1123Z))
		}
		if action == dsnDelayed {
			w("Will-Retry-Until: %s", env.Received.Add(cfg.MaxLifetime.D()).Format(time.RFC1123Z))
		}
	}
	w("")

	// Original header.
	w("--%s", boundary)
	w("Content-Type: text/rfc822-headers")
	w("Content-Description: Undelivered Message Headers")
	w("")
	b.Write(hdr)
	w("")
	w("--%s--", boundary)
	return b.Bytes()
}

// mtaName is the host of a backend address ("host:port", as the relay
// reports it) for Remote-MTA, whose "dns" name type takes a host name
// (RFC 3464 2.3.5), not an address with a port.
func mtaName(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil && h != "" {
		return h
	}
	return hostport
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// validAddr rejects what would break an env file line, a DSN header or an
// SMTP command.
func validAddr(s string) bool {
	return !strings.ContainsAny(s, "\r\n\x00<>")
}
