package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/spamhdr"
	"moat.dev/moat/internal/verdict"
)

// Replies with generic texts. Internal errors are always temporary.
var (
	replyInternal  = verdict.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "Temporary local problem, please try again later"}
	replyNoSpace   = verdict.Reply{Code: 452, Enhanced: [3]int{4, 3, 1}, Text: "Insufficient system storage, please try again later"}
	replyRelay     = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Relaying denied"}
	replySmuggling = verdict.Reply{Code: 550, Enhanced: [3]int{5, 6, 0}, Text: "Message contains bare CR/LF or NUL (see RFC 5321 2.3.8)"}
	// A text line over 1000 octets breaks RFC 5321 4.5.3.1.6 and RFC 5322
	// 2.1.1. Moat writes the bytes once and never rewrites them (folding
	// would break DKIM), and backends differ in what they do with such
	// lines (truncate, fold, refuse), so the message is refused at the end
	// of DATA with a permanent media error, as Exchange Online and several
	// gateways do; raise max_line_length to be more lenient.
	replyLongLine = verdict.Reply{Code: 554, Enhanced: [3]int{5, 6, 0}, Text: "Message contains a line longer than 1000 octets (RFC 5321 4.5.3.1.6)"}
	replyTooBig   = verdict.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Text: "Message size exceeds fixed limit"}
	replySequence = verdict.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Text: "Send HELO/EHLO first"}
	replyDrop     = verdict.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Text: "Service not available, closing connection"}
	replyPolicy   = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Message refused by policy"}
	replyTempPol  = verdict.Reply{Code: 451, Enhanced: [3]int{4, 7, 1}, Text: "Try again later"}
)

// session implements go-smtp's Session for one connection.
type session struct {
	srv *Server
	c   *sconn
	txn *txnState
}

type txnState struct {
	t        *pipeline.Txn
	start    time.Time
	eightBit bool
	utf8     bool
	refused  int
	// refusals are the refused recipients with their replies (the first
	// maxRefusals), logged with the transaction so that tracking finds
	// them; lastRefusal is the last refusal's reply.
	refusals    []string
	lastRefusal string
	logged      bool
	report      string // "spam" or "ham": a report to a learning address (ReportSink)
}

var replyReportAlone = verdict.Reply{Code: 452, Enhanced: [3]int{4, 5, 3}, Text: "Send reports to the learning address in a message of their own"}

func (s *Server) newSession(gc *smtp.Conn) (smtp.Session, error) {
	c, ok := gc.Conn().(*sconn)
	if !ok {
		return nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: replyInternal.Text}
	}
	sess := &session{srv: s, c: c}
	c.sess = sess
	return sess, nil
}

// fail returns the error go-smtp turns into r, and tells sconn why, for
// the metrics and the error count.
func (s *session) fail(reason string, r verdict.Reply, countErr bool) error {
	s.c.reason, s.c.countErr = reason, countErr
	return smtpErr(r)
}

func smtpErr(r verdict.Reply) *smtp.SMTPError {
	if r.Code < 200 || r.Code > 599 {
		r = replyInternal
	}
	if r.Enhanced[0] != r.Code/100 {
		r.Enhanced = [3]int{r.Code / 100, 0, 0}
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: cleanText(r.Text)}
}

// cleanText keeps a reply text on one printable line.
func cleanText(s string) string {
	if s == "" {
		return "Error"
	}
	ok := true
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			ok = false
			break
		}
	}
	if ok && len(s) <= 400 {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c == 0x7f {
			b[i] = ' '
		}
	}
	if len(b) > 400 {
		b = b[:400]
	}
	return string(b)
}

// recoverTo turns a panic in a session method into 451 4.3.0.
func (s *session) recoverTo(err *error, d *Draft) {
	if p := recover(); p != nil {
		s.c.log.Error("panic in SMTP session", "panic", p)
		if d != nil && *d != nil {
			(*d).Abort()
		}
		*err = s.fail("internal", replyInternal, false)
	}
}

func (s *session) Reset() {
	s.endTxn("no_data")
}

func (s *session) Logout() error {
	s.endTxn("no_data")
	return nil
}

// endTxn logs a transaction that ended without a DATA outcome.
func (s *session) endTxn(outcome string) {
	if t := s.txn; t != nil && !t.logged {
		t.logged = true
		s.srv.metrics.transactions.WithLabelValues(outcome).Inc()
		reply := s.c.lastReply
		if len(t.t.Rcpts) == 0 && t.lastRefusal != "" {
			// Every recipient was refused: that is how the transaction
			// ended, whatever the client sent next (QUIT, RSET).
			reply = t.lastRefusal
		}
		s.logTxn(t, outcome, nil, 0, reply)
	}
	s.txn = nil
}

// maxRefusals bounds the refused recipients logged per transaction.
const maxRefusals = 20

func (s *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	defer s.recoverTo(&err, nil)
	if s.txn != nil {
		return s.fail("sequence", verdict.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Text: "Error: nested MAIL command"}, true)
	}
	if !s.c.heloSeen {
		return s.fail("sequence", replySequence, true)
	}
	if !s.c.heloRan {
		s.c.runHelo()
	}
	pa := s.c.cmdAddr
	s.c.txns++
	s.c.rcptTried = 0
	t := &txnState{
		t: &pipeline.Txn{
			Conn:   s.c.pc,
			From:   pa.Addr,
			Size:   opts.Size,
			Report: &verdict.Report{},
			Log:    s.c.log,
		},
		start:    time.Now(),
		eightBit: opts.Body == smtp.Body8BitMIME,
		utf8:     opts.UTF8,
	}
	s.txn = t
	dec := s.srv.runner.Mail(s.c.ctx, t.t)
	if dec.Action == verdict.Drop {
		s.c.dead = io.EOF
		s.c.endReason = "dropped"
		return s.fail("drop", replyDrop, false)
	}
	// Other MAIL verdicts are held: Runner.Rcpt decides over them.
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) (err error) {
	defer s.recoverTo(&err, nil)
	t := s.txn
	if t == nil {
		return s.fail("sequence", verdict.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Text: "Need MAIL first"}, true)
	}
	pa := s.c.cmdAddr
	defer func() {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return
		}
		t.lastRefusal = fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		if len(t.refusals) < maxRefusals {
			t.refusals = append(t.refusals, pa.Addr.String()+": "+t.lastRefusal)
		}
	}()
	if !t.utf8 && !isASCII(pa.Addr.Raw) {
		t.refused++
		return s.fail("smtputf8", verdict.Reply{Code: 553, Enhanced: [3]int{5, 6, 7}, Text: "Must declare SMTPUTF8 to send unicode address"}, true)
	}
	ok, derr := s.srv.deps.Domains(s.c.ctx, pa.Lookup)
	if derr != nil {
		t.refused++
		t.t.Log.Warn("domain lookup failed", "domain", pa.Lookup, "err", derr)
		return s.fail("domain_store", replyInternal, false)
	}
	if !ok {
		t.refused++
		return s.fail("relay", replyRelay, true)
	}
	rc := &pipeline.Rcpt{Addr: pa.Addr, Domain: pa.Lookup, Report: &verdict.Report{}}
	if rs := s.srv.deps.Reports; rs != nil {
		// A report goes to the classifier, not to a mailbox: alone in its
		// transaction, and judged by its sender (Learn), not by the checks.
		lesson := rs.Match(pa.Addr)
		if (lesson != "" && len(t.t.Rcpts) > 0) || (lesson == "" && t.report != "") {
			t.refused++
			return s.fail("report_mixed", replyReportAlone, false)
		}
		if lesson != "" {
			t.report = lesson
			t.t.Rcpts = append(t.t.Rcpts, rc)
			return nil
		}
	}
	dec := s.srv.runner.Rcpt(s.c.ctx, t.t, rc)
	switch dec.Action {
	case verdict.Drop:
		t.refused++
		s.c.dead = io.EOF
		s.c.endReason = "dropped"
		return s.fail("drop", replyDrop, false)
	case verdict.Reject:
		t.refused++
		r := dec.Reply
		if r.Code/100 != 5 {
			r = replyPolicy
		}
		return s.fail("policy", r, false)
	case verdict.TempFail:
		t.refused++
		r := dec.Reply
		if r.Code/100 != 4 {
			r = replyTempPol
		}
		return s.fail("policy", r, false)
	}
	if th := s.srv.deps.Thresholds; th != nil {
		own, err := th(s.c.ctx, pa.Addr.String())
		if err != nil {
			t.refused++
			t.t.Log.Warn("thresholds lookup failed", "rcpt", pa.Addr.String(), "err", err)
			return s.fail("prefs_store", replyInternal, false)
		}
		// One decision per transaction: a recipient whose own spam
		// thresholds differ from the first recipient's is deferred, and
		// the client sends it in a transaction of its own.
		if len(t.t.Rcpts) > 0 && !t.t.Rcpts[0].Own.Equal(own) {
			t.refused++
			return s.fail("policy_split", replyPolicySplit, false)
		}
		rc.Own = own
	}
	// Several customer domains may share a transaction: DATA is decided
	// under the first recipient's domain's policy (Runner.Data does so),
	// and the queue splits deliveries per domain.
	t.t.Rcpts = append(t.t.Rcpts, rc)
	return nil
}

var replyPolicySplit = verdict.Reply{Code: 452, Enhanced: [3]int{4, 5, 3}, Text: "Recipient has its own spam settings: send it in a separate transaction"}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// maxHeaderCapture is the most of the header section kept for the checks.
// It is also the limit of the header section: a longer one is refused
// (552 5.3.4, as Exchange does), since fields past what the checks parse
// (a second From:, say) would reach the recipient unexamined.
const maxHeaderCapture = 256 << 10

var replyLoop = verdict.Reply{Code: 554, Enhanced: [3]int{5, 4, 6}, Text: "Too many hops (Received fields): mail loop"}

// spoolReply is the answer to a spool failure: 452 4.3.1 when the disk
// (or the quota) is full (RFC 3463: mail system full), else 451 4.3.0.
func spoolReply(err error) verdict.Reply {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return replyNoSpace
	}
	return replyInternal
}

// hops counts the Received fields of a header section.
func hops(hdr []byte) int {
	n := 0
	for line := range bytes.SplitSeq(hdr, crlf) {
		if len(line) >= 9 && bytes.EqualFold(line[:9], []byte("received:")) {
			n++
		}
	}
	return n
}

var replyHeaderTooBig = verdict.Reply{Code: 552, Enhanced: [3]int{5, 3, 4}, Text: "Message header section exceeds 256 KiB"}

func (s *session) Data(r io.Reader) (err error) {
	var d Draft // nil again once committed, aborted or handed over
	defer s.recoverTo(&err, &d)
	abort := func() { d.Abort(); d = nil }
	t := s.txn
	if t == nil || len(t.t.Rcpts) == 0 || !s.c.heloSeen {
		return s.fail("sequence", verdict.Reply{Code: 503, Enhanced: [3]int{5, 5, 1}, Text: "Need MAIL and RCPT first"}, true)
	}
	t.logged = true
	d, err = s.srv.deps.Spool.NewDraft()
	if err != nil || d == nil {
		t.t.Log.Error("cannot create draft", "err", err)
		return s.finish(t, nil, "tempfailed", "spool", spoolReply(err), 0)
	}
	t.t.ID = d.ID()
	t.t.Log = t.t.Log.With("queue_id", t.t.ID)

	// Stream into the draft in 32 KiB writes (go-smtp's reader fills the
	// whole buffer), keeping the header's first 64 KiB to parse it once.
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	var hdr []byte
	hdrDone, hdrTooBig := false, false
	var size int64
	var rerr, werr error
	for {
		n, e := r.Read(buf)
		if n > 0 {
			if !hdrDone {
				from := max(0, len(hdr)-3)
				hdr = append(hdr, buf[:min(n, maxHeaderCapture-len(hdr))]...)
				if i := bytes.Index(hdr[from:], []byte("\r\n\r\n")); i >= 0 {
					hdr = hdr[:from+i+4]
					hdrDone = true
				} else if len(hdr) >= maxHeaderCapture {
					hdrDone = true
					hdrTooBig = allFieldLines(hdr)
				}
			}
			size += int64(n)
			if werr == nil {
				_, werr = d.Write(buf[:n])
			}
		}
		if e != nil {
			if e != io.EOF {
				rerr = e
			}
			break
		}
	}
	bufPool.Put(bp)
	s.srv.metrics.bytes.Add(float64(size))
	nhops := hops(hdr)
	switch {
	case rerr != nil:
		abort()
		var se *smtp.SMTPError
		if errors.As(rerr, &se) && se.Code == 552 {
			return s.finish(t, nil, "rejected", "size", replyTooBig, size)
		}
		if s.c.dtimout {
			s.c.dead = io.EOF
			return s.finish(t, nil, "tempfailed", "timeout",
				verdict.Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Text: "Timeout during DATA, closing connection"}, size)
		}
		return s.finish(t, nil, "tempfailed", "client", replyInternal, size)
	case size > s.srv.cfg.MaxMessageSize:
		abort()
		return s.finish(t, nil, "rejected", "size", replyTooBig, size)
	case werr != nil:
		abort()
		t.t.Log.Error("writing draft", "err", werr)
		return s.finish(t, nil, "tempfailed", "spool", spoolReply(werr), size)
	case s.c.dflags.smuggling():
		abort()
		f := s.c.dflags
		t.t.Log.Info("bare CR/LF or NUL in DATA", "bare_cr", f.bareCR, "bare_lf", f.bareLF, "nul", f.nul)
		return s.finish(t, nil, "rejected", "smuggling", replySmuggling, size)
	case s.c.dflags.longLine:
		abort()
		return s.finish(t, nil, "rejected", "line_length", replyLongLine, size)
	case hdrTooBig:
		abort()
		return s.finish(t, nil, "rejected", "header_size", replyHeaderTooBig, size)
	case nhops > s.srv.cfg.MaxHops:
		abort()
		t.t.Log.Warn("mail loop: too many Received fields", "hops", nhops, "max_hops", s.srv.cfg.MaxHops)
		return s.finish(t, nil, "rejected", "loop", replyLoop, size)
	}

	if t.report != "" {
		raw, err := readAll(d.Open)
		abort()
		if err != nil {
			t.t.Log.Error("reading report", "err", err)
			return s.finish(t, nil, "tempfailed", "spool", replyInternal, size)
		}
		r := s.srv.deps.Reports.Learn(s.c.ctx, t.t, t.t.Rcpts[0].Domain, t.report, raw)
		outcome := "learned"
		switch r.Code / 100 {
		case 4:
			outcome = "tempfailed"
		case 5:
			outcome = "rejected"
		}
		return s.finish(t, nil, outcome, "report", r, size)
	}
	msg := &pipeline.Message{Header: parseHeader(hdr), Size: size, Open: d.Open}
	dec := s.srv.runner.Data(s.c.ctx, t.t, msg)
	switch dec.Action {
	case verdict.Drop:
		abort()
		s.c.dead = io.EOF
		s.c.endReason = "dropped"
		return s.finish(t, &dec, "dropped", "drop", replyDrop, size)
	case verdict.Reject:
		abort()
		r := dec.Reply
		if r.Code/100 != 5 {
			r = replyPolicy
		}
		return s.finish(t, &dec, "rejected", "policy", r, size)
	case verdict.TempFail:
		abort()
		r := dec.Reply
		if r.Code/100 != 4 {
			r = replyTempPol
		}
		return s.finish(t, &dec, "tempfailed", "policy", r, size)
	}
	tagged := dec.Action == verdict.Tag || dec.Action == verdict.Quarantine
	env := s.envelope(t, &dec, size, tagged)
	queued := verdict.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "Ok: queued as " + t.t.ID}
	if dec.Action == verdict.Quarantine && s.srv.deps.Quarantine != nil {
		qerr := s.srv.deps.Quarantine(s.c.ctx, d, env, dec)
		if qerr == nil {
			d = nil
		}
		if qerr != nil {
			abort()
			t.t.Log.Error("quarantine failed", "err", qerr)
			return s.finish(t, &dec, "tempfailed", "quarantine", replyInternal, size)
		}
		if dec.Reply.Code/100 == 5 || dec.Reply.Code/100 == 4 {
			return s.finish(t, &dec, "quarantined", "quarantine", dec.Reply, size)
		}
		return s.finish(t, &dec, "quarantined", "", queued, size)
	}
	cerr := d.Commit(env)
	if cerr == nil {
		d = nil
	}
	if cerr != nil {
		abort()
		t.t.Log.Error("commit failed", "err", cerr)
		return s.finish(t, &dec, "tempfailed", "spool", spoolReply(cerr), size)
	}
	outcome := "queued"
	if tagged {
		outcome = "tagged"
	}
	return s.finish(t, &dec, outcome, "", queued, size)
}

// finish logs the transaction and returns the reply for go-smtp. It is the
// one exit of Data.
func (s *session) finish(t *txnState, dec *policy.Decision, outcome, reason string, r verdict.Reply, size int64) error {
	s.srv.metrics.transactions.WithLabelValues(outcome).Inc()
	s.srv.metrics.dataLatency.Observe(time.Since(s.c.dataEnd(t.start)).Seconds())
	e := smtpErr(r)
	s.logTxn(t, outcome, dec, size, verdict.Reply{Code: e.Code, Enhanced: [3]int(e.EnhancedCode), Text: e.Message}.String())
	if r.Code/100 == 2 {
		s.c.reason, s.c.countErr = "", false
		return e
	}
	return s.fail(reason, r, false)
}

// logTxn writes the one Info line per transaction. It builds typed
// attributes (no boxing of each value into an interface) in a fixed-size
// array, and nothing at all when Info is not enabled.
func (s *session) logTxn(t *txnState, outcome string, dec *policy.Decision, size int64, reply string) {
	if !s.c.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	rcpts := make([]string, len(t.t.Rcpts))
	for i, rc := range t.t.Rcpts {
		rcpts[i] = rc.Addr.String()
	}
	var buf [15]slog.Attr
	attrs := append(buf[:0],
		slog.String("queue_id", t.t.ID), slog.String("helo", s.c.pc.Helo), slog.String("from", t.t.From.String()),
		slog.Any("rcpts", rcpts), slog.Int("refused_rcpts", t.refused), slog.Int64("size", size),
		slog.String("outcome", outcome), slog.String("reply", reply),
		slog.Duration("elapsed", time.Since(t.start).Round(time.Microsecond)),
	)
	if len(t.refusals) > 0 {
		attrs = append(attrs, slog.Any("refused", t.refusals))
	}
	if dec != nil {
		syms := make([]string, len(dec.Counted))
		for i, sym := range dec.Counted {
			syms[i] = sym.Name
		}
		attrs = append(attrs, slog.String("action", dec.Action.String()), slog.Float64("score", dec.Score),
			slog.Any("symbols", syms), slog.String("reason", dec.Reason))
		if len(dec.Observed) > 0 {
			attrs = append(attrs, slog.Any("observed", dec.Observed))
		}
	}
	s.c.log.LogAttrs(context.Background(), slog.LevelInfo, "smtp transaction", attrs...)
}

// envelope builds the queue envelope and the header fields Moat prepends.
func (s *session) envelope(t *txnState, dec *policy.Decision, size int64, tagged bool) *queue.Envelope {
	pc := s.c.pc
	proto := "SMTP"
	if s.c.esmtp {
		proto = "ESMTP"
		if t.utf8 {
			proto = "UTF8SMTP"
		}
	}
	if s.c.tlsOn {
		proto += "S"
	}
	// 8-bit content sent without BODY=8BITMIME is still 8-bit: it is
	// relayed declared as such (RFC 6152), as Postfix does.
	eightBit := t.eightBit || s.c.dflags.eightBit
	env := &queue.Envelope{
		ID:       t.t.ID,
		From:     t.t.From.String(),
		Received: time.Now().UTC(),
		Client: queue.ClientInfo{
			IP: pc.IP.String(), Port: pc.Port, Helo: pc.Helo, PTR: pc.ClientName(), TLS: s.c.tlsOn, TLSDesc: s.c.tlsDesc, Proto: proto,
		},
		Size:     size,
		EightBit: eightBit,
		SMTPUTF8: t.utf8,
	}
	for _, rc := range t.t.Rcpts {
		env.Rcpts = append(env.Rcpts, queue.RcptState{Addr: rc.Addr.String(), Domain: rc.Domain, Status: "pending"})
	}
	// Results of every phase: connection/HELO, transaction, recipients.
	results := pc.Report.Results()
	results = append(results, t.t.Report.Results()...)
	for _, rc := range t.t.Rcpts {
		results = append(results, rc.Report.Results()...)
	}
	var b strings.Builder
	syms := append([]verdict.Symbol(nil), dec.Counted...)
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Score > syms[j].Score })
	checks := "score=" + verdict.FormatScore(dec.Score) + " action=" + dec.Action.String()
	for _, sym := range syms {
		checks += " " + sym.Name + "(" + verdict.FormatScore(sym.Score) + ")"
	}
	writeField(&b, "X-Moat-Checks", checks)
	var auth []string
	for _, r := range results {
		auth = append(auth, r.Auth...)
	}
	ar := s.srv.cfg.Hostname
	if len(auth) == 0 {
		ar += "; none"
	} else {
		ar += "; " + strings.Join(auth, "; ")
	}
	writeField(&b, "Authentication-Results", ar)
	for _, r := range results {
		for _, f := range r.Headers {
			if validFieldName(f.Name) {
				writeField(&b, f.Name, f.Value)
			}
		}
	}
	// SpamAssassin-compatible fields, so existing Sieve/procmail rules keep
	// working: X-Spam-Flag (when tagged), X-Spam-Score, -Level, -Status.
	pol := policy.Default()
	if s.srv.runner != nil && len(t.t.Rcpts) > 0 {
		pol = s.srv.runner.Policy(t.t.Rcpts[0].Domain).With(t.t.Rcpts[0].Own)
	}
	required := pol.TagScore
	for _, f := range spamhdr.SpamHeaders(dec.Score, required, syms, dec.Autolearn) {
		if f.Name == "X-Spam-Flag" && !tagged {
			continue
		}
		writeField(&b, f.Name, f.Value)
	}
	if tagged && !strings.Contains(b.String(), "X-Spam-Flag:") {
		writeField(&b, "X-Spam-Flag", "YES")
	}
	if dec.Action == verdict.Tag && pol.SubjectTag != "" {
		env.SubjectPrefix = pol.SubjectTag + " "
	}
	env.Prepend = b.String()
	return env
}

// readAll reads a whole spooled message.
func readAll(open func() (io.ReadCloser, error)) ([]byte, error) {
	rc, err := open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func validFieldName(n string) bool {
	if n == "" || len(n) > 76 {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// writeField writes "Name: value" CRLF, the value cleaned of control
// characters (no header injection from check output) and folded at spaces
// to keep lines under 78 octets where possible.
func writeField(b *strings.Builder, name, value string) {
	value = strings.Join(strings.FieldsFunc(value, func(r rune) bool {
		return r == ' ' || r == '\t' || r < ' ' || r == 0x7f
	}), " ")
	b.WriteString(name)
	b.WriteString(":")
	col := len(name) + 1
	for i, w := range strings.Split(value, " ") {
		if i > 0 && col+1+len(w) > 78 {
			b.WriteString("\r\n\t")
			col = 1
		} else {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w)
		col += len(w)
	}
	b.WriteString("\r\n")
}

// parseHeader parses the captured header, tolerating garbage: whatever
// could be parsed before an error is kept.
func parseHeader(h []byte) textproto.MIMEHeader {
	if !bytes.HasSuffix(h, []byte("\r\n\r\n")) {
		h = append(h[:len(h):len(h)], "\r\n\r\n"...)
	}
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(h)))
	hdr, _ := tr.ReadMIMEHeader()
	if hdr == nil {
		hdr = textproto.MIMEHeader{}
	}
	return hdr
}

// allFieldLines reports whether every complete line of b is a header
// field line or a continuation, i.e. whether the header section goes on
// past b (rather than b holding a body without a header).
func allFieldLines(b []byte) bool {
	first := true
	for {
		i := bytes.Index(b, crlf)
		if i < 0 {
			return true
		}
		line := b[:i]
		b = b[i+2:]
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') && !first {
			first = false
			continue
		}
		first = false
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(string(line[:colon])) {
			return false
		}
	}
}

// dataEnd is when the DATA phase ended (for the latency histogram).
func (c *sconn) dataEnd(start time.Time) time.Time {
	if c.dataEndAt.Before(start) {
		return time.Now()
	}
	return c.dataEndAt
}

var _ net.Conn = (*sconn)(nil)
