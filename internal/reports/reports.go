// Package reports is the classifier's forwarding addresses: people send
// (forward) spam that got through to spam-report@their-domain, and
// wrongly tagged mail to ham-report@their-domain, and Moat learns from it.
// A gateway never sees people's Junk folders; this is how it learns their
// corrections without a plugin in every mail client.
//
// A report is accepted only from a user of the same customer domain
// (recipient verification of the sender's address), and only with proof
// that the sender is who it says: an authenticated SMTP session, or an
// SPF pass for the sender's domain (the report came from the domain's own
// servers). The original message is taken from a message/rfc822
// attachment ("forward as attachment"); without one, from the forwarded
// text after an "Original Message"/"Forwarded message" marker, or else
// the report's own body. Each original is a correction for the reporting
// user's model and the site model (classify.Classifier.Correct). Reports
// are consumed: never relayed to the backend.
package reports

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"

	gomessage "github.com/emersion/go-message"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Config names the local parts of the learning addresses. They apply to
// every customer domain; "" turns that address off (the default: a
// customer may have a real mailbox of that name).
type Config struct {
	// Spam: local part of the "this is spam" address, e.g. "spam-report".
	Spam string `yaml:"spam"`
	// Ham: local part of the "this is not spam" address, e.g. "ham-report".
	Ham string `yaml:"ham"`
	// MaxOriginals: originals learned from one report at most (default 20).
	MaxOriginals int `yaml:"max_originals"`
}

// DefaultConfig returns the defaults: both addresses off.
func DefaultConfig() Config { return Config{MaxOriginals: 20} }

var localPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

// Validate checks the configuration.
func (c *Config) Validate() error {
	for _, x := range []struct{ key, v string }{{"spam", c.Spam}, {"ham", c.Ham}} {
		if x.v != "" && !localPart.MatchString(x.v) {
			return fmt.Errorf("%s: %q is not a plain local part (letters, digits, . _ + -)", x.key, x.v)
		}
	}
	if c.Spam != "" && strings.EqualFold(c.Spam, c.Ham) {
		return errors.New("spam and ham: must differ")
	}
	if c.MaxOriginals < 1 || c.MaxOriginals > 1000 {
		return errors.New("max_originals: must be between 1 and 1000")
	}
	return nil
}

// SenderVerifier reports whether addr is a user of its (customer) domain.
type SenderVerifier func(ctx context.Context, tx *pipeline.Txn, addr pipeline.Address) (bool, error)

// Deps are the collaborators.
type Deps struct {
	Classifier *classify.Classifier // required
	Verify     SenderVerifier       // required
	Log        *slog.Logger         // required
}

// Reports learns from reports sent to the learning addresses.
type Reports struct {
	cfg  Config
	deps Deps
}

// New builds Reports.
func New(cfg Config, deps Deps) (*Reports, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Classifier == nil || deps.Verify == nil || deps.Log == nil {
		return nil, errors.New("reports: Classifier, Verify and Log are required")
	}
	return &Reports{cfg: cfg, deps: deps}, nil
}

// Match returns the lesson of a recipient: "spam" or "ham" for a
// learning address (of a domain the caller has found to be a customer's),
// "" otherwise. Local parts compare case-insensitively; subaddresses
// (spam-report+x) do not match.
func (r *Reports) Match(rcpt pipeline.Address) string {
	switch {
	case r.cfg.Spam != "" && strings.EqualFold(rcpt.Local, r.cfg.Spam):
		return "spam"
	case r.cfg.Ham != "" && strings.EqualFold(rcpt.Local, r.cfg.Ham):
		return "ham"
	}
	return ""
}

var (
	replyNotUser  = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Reports are accepted only from users of this domain"}
	replyNotProof = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Report sender not verified: authenticate, or send from your domain's own servers (SPF)"}
	replyTemp     = verdict.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "Report not learned, please try again later"}
	replyEmpty    = verdict.Reply{Code: 550, Enhanced: [3]int{5, 6, 0}, Text: "No message found in the report"}
)

// Learn checks the sender of a report to domain and learns its
// originals with label. The reply is what the client gets: 250 once
// every original is learned, 5xx for a sender not allowed to report, 4xx
// when the model could not be written.
func (r *Reports) Learn(ctx context.Context, tx *pipeline.Txn, domain, lesson string, raw []byte) verdict.Reply {
	label := classify.Ham
	if lesson == "spam" {
		label = classify.Spam
	}
	from := tx.From
	if from.Domain == "" || !strings.EqualFold(from.Domain, domain) {
		return replyNotUser
	}
	if tx.Conn == nil || (tx.Conn.AuthUser == "" && !spfPass(tx)) {
		return replyNotProof
	}
	ok, err := r.deps.Verify(ctx, tx, from)
	if err != nil {
		r.log(tx).Warn("report: cannot verify the sender", "from", from.String(), "err", err)
		return replyTemp
	}
	if !ok {
		return replyNotUser
	}
	origs := Originals(raw, r.cfg.MaxOriginals)
	if len(origs) == 0 {
		return replyEmpty
	}
	user := strings.ToLower(from.String())
	for _, o := range origs {
		m := message.ParseBytes(o, message.DefaultLimits())
		out, err := r.deps.Classifier.Correct(ctx, user, m, label)
		if err != nil {
			r.log(tx).Error("report: learning failed", "from", user, "label", label.String(), "err", err)
			return replyTemp
		}
		r.log(tx).Info("report learned", "from", user, "label", label.String(), "outcome", out.String(), "subject", m.Subject)
	}
	return verdict.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: fmt.Sprintf("Thanks: %d message(s) learned as %s", len(origs), label)}
}

func (r *Reports) log(tx *pipeline.Txn) *slog.Logger {
	if tx.Log != nil {
		return tx.Log
	}
	return r.deps.Log
}

// spfPass reports whether the transaction's SPF result is a pass.
func spfPass(tx *pipeline.Txn) bool {
	if tx.Report == nil {
		return false
	}
	res, ok := tx.Report.Result("spf")
	if !ok || res.Err != nil {
		return false
	}
	for _, a := range res.Auth {
		if strings.HasPrefix(a, "spf=pass") {
			return true
		}
	}
	return false
}

// Originals extracts the reported messages from a report: every
// message/rfc822 part (forwarded as attachment, at any depth, at most
// max), else the forwarded text after an inline-forward marker, else the
// report's body with the report's Subject.
func Originals(raw []byte, max int) [][]byte {
	var out [][]byte
	if e, err := gomessage.Read(bytes.NewReader(raw)); err == nil || gomessage.IsUnknownCharset(err) || gomessage.IsUnknownEncoding(err) {
		walk(e, 0, max, &out)
	}
	if len(out) > 0 {
		return out
	}
	i := bytes.Index(raw, []byte("\r\n\r\n"))
	sep := 4
	if j := bytes.Index(raw, []byte("\n\n")); i < 0 || (j >= 0 && j < i) {
		i, sep = j, 2
	}
	if i < 0 {
		return nil
	}
	body := raw[i+sep:]
	if fwd := inlineForward(body); fwd != nil {
		return [][]byte{fwd}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	subj := ""
	if m := message.ParseBytes(raw, message.DefaultLimits()); m != nil {
		subj = stripFwd(m.Subject)
	}
	return [][]byte{append([]byte("Subject: "+subj+"\r\n\r\n"), body...)}
}

func walk(e *gomessage.Entity, depth, max int, out *[][]byte) {
	if e == nil || depth > 10 || len(*out) >= max {
		return
	}
	mt, _, _ := e.Header.ContentType()
	if strings.EqualFold(mt, "message/rfc822") || strings.EqualFold(mt, "message/global") {
		if b, err := io.ReadAll(io.LimitReader(e.Body, 10<<20)); err == nil && len(bytes.TrimSpace(b)) > 0 {
			*out = append(*out, b)
		}
		return
	}
	mr := e.MultipartReader()
	if mr == nil {
		return
	}
	for len(*out) < max {
		p, err := mr.NextPart()
		if err != nil && !gomessage.IsUnknownCharset(err) && !gomessage.IsUnknownEncoding(err) {
			return
		}
		walk(p, depth+1, max, out)
	}
}

// forwardMarker matches the lines mail clients put above forwarded text.
var forwardMarker = regexp.MustCompile(`(?im)^[ \t>]*(-{2,}\s*(original message|forwarded message)\s*-{2,}|begin forwarded message:)[ \t]*\r?$`)

// inlineForward returns the forwarded message after a marker: its header
// lines (From:, Subject:, ... up to the first blank line) and the text
// after them, as a message; nil without a marker.
func inlineForward(body []byte) []byte {
	loc := forwardMarker.FindIndex(body)
	if loc == nil {
		return nil
	}
	rest := body[loc[1]:]
	var hdr, text bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(rest))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	inHeader, seen := true, false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if inHeader {
			t := strings.TrimSpace(line)
			if t == "" {
				if seen {
					inHeader = false
				}
				continue
			}
			if k, v, ok := strings.Cut(t, ":"); ok && !strings.ContainsAny(k, " \t") && k != "" {
				hdr.WriteString(k + ":" + v + "\r\n")
				seen = true
				continue
			}
			inHeader = false
		}
		text.WriteString(line + "\r\n")
	}
	if hdr.Len() == 0 && text.Len() == 0 {
		return nil
	}
	return append(append(hdr.Bytes(), "\r\n"...), text.Bytes()...)
}

// stripFwd removes forwarding prefixes from a subject.
func stripFwd(s string) string {
	for {
		t := strings.TrimSpace(s)
		l := strings.ToLower(t)
		switch {
		case strings.HasPrefix(l, "fwd:"):
			s = t[4:]
		case strings.HasPrefix(l, "fw:"):
			s = t[3:]
		default:
			return t
		}
	}
}
