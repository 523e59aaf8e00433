package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

// sconn sits between the TCP connection and go-smtp. go-smtp parses
// commands, keeps the command sequence and formats replies; sconn owns
// everything about bytes and time that go-smtp gets wrong or does not do:
//
//   - framing: in command mode go-smtp gets exactly one complete, canonical
//     command line per Read, so the replies to earlier pipelined commands
//     have always been written when sconn looks at the next line. Lines over
//     max_command_line_length are answered "500 5.5.2 Line too long" here
//     and never reach go-smtp; so are unknown and unoffered commands (AUTH,
//     BDAT, XCLIENT, XFORWARD, ...), and MAIL/RCPT whose path fails the
//     strict address parser (parsePath).
//   - STARTTLS is done here (go-smtp would put the TLS layer above us):
//     bytes pipelined after STARTTLS are discarded, and go-smtp's
//     transaction is reset with an injected RSET whose reply is swallowed.
//   - DATA: after go-smtp writes 354, sconn hands over message bytes in big
//     slices, up to and never beyond the end-of-data line, recognised with
//     the same state machine as go-smtp's dataReader so the two never
//     disagree. The same pass flags bare CR, bare LF, NUL and long lines.
//   - deadlines: one deadline per whole command line (a dribbling client is
//     cut), one for the whole DATA phase, all clamped to the session cap.
//   - replies: every reply passes through write, the single place where
//     soft bounce is applied, errors are counted (max_errors) and the EHLO
//     capabilities are trimmed (no CHUNKING; STARTTLS only when offered;
//     SIZE is max_message_size, see New). go-smtp's replies are put right
//     there too: its out-of-sequence 502s become 503 5.5.1 (554 5.5.1 "no
//     valid recipients" for DATA after only refused RCPTs), 354 gets an
//     enhanced code, and the EHLO reply's first line names the server.
//   - commands that move no mail forward (NOOP, RSET, VRFY, HELP, HELO)
//     are counted against max_junk_commands; MAIL/RCPT parameters are
//     vetted (checkParams) so only the advertised ones reach go-smtp.
//   - greeting: pregreet detection and the connection checks run on the
//     first write (the greeting), inside the connection's goroutine.
type sconn struct {
	srv        *Server
	raw        net.Conn // the TCP connection; deadlines are always set here
	rw         net.Conn // raw, or the *tls.Conn after STARTTLS
	br         *bufio.Reader
	key        string // limiter key (IPv4 address or IPv6 /64)
	id         string
	started    time.Time
	sessionEnd time.Time
	pc         *pipeline.Conn
	sess       *session // set by newSession; same goroutine as Read/Write
	log        *slog.Logger
	ctx        context.Context
	cancel     context.CancelFunc

	mu      sync.Mutex // guards idle against Shutdown's poke
	idle    bool
	closed  sync.Once
	tracked bool

	greeted  bool
	dataMode bool
	pend     []byte // rest of a line not yet returned to go-smtp
	line     []byte // scratch for the current command line
	inject   string // synthetic command for go-smtp (RSET after STARTTLS)
	swallow  int    // final replies to drop (the injected RSET's)
	dead     error  // sticky read error

	lastVerb    string
	pendingHelo string
	heloSeen    bool // a HELO/EHLO was accepted in the current TLS epoch
	heloRan     bool // Runner.Helo ran for it
	esmtp       bool
	tlsOn       bool
	tlsDesc     string // "TLS 1.3 with cipher TLS_AES_128_GCM_SHA256", for Received
	errors      int
	junk        int // NOOP, RSET, VRFY, HELO... since the last accepted message
	rcptTried   int // RCPT commands since the last accepted MAIL
	txns        int
	connResults []verdict.Result // Runner.Conn results, kept to rebuild the report on a new HELO
	heloDec     policy.Decision

	cmdAddr parsedAddr // the path of the MAIL/RCPT line being handled

	// For the reply about to be written by go-smtp (set by the session or
	// by sconn just before the reply).
	reason    string
	countErr  bool
	lastReply string
	endReason string

	// DATA scanner state.
	dstate    uint8
	dprevCR   bool
	dline     int
	dflags    dataFlags
	dtimout   bool
	dataEndAt time.Time
}

type dataFlags struct {
	bareCR, bareLF, nul, longLine bool
	eightBit                      bool // an octet >= 0x80 (declared or not)
}

func (f dataFlags) smuggling() bool { return f.bareCR || f.bareLF || f.nul }

func newSconn(srv *Server, raw net.Conn, key string, ap netip.AddrPort) *sconn {
	now := time.Now()
	c := &sconn{
		srv:        srv,
		raw:        raw,
		rw:         raw,
		key:        key,
		id:         srv.nextID(),
		started:    now,
		sessionEnd: now.Add(srv.cfg.SessionTimeout),
	}
	c.br = bufio.NewReaderSize(rawReader{c}, 8192)
	c.ctx, c.cancel = context.WithCancel(srv.baseCtx)
	c.log = srv.log.With("conn_id", c.id, "ip", ap.Addr().String())
	c.pc = &pipeline.Conn{
		ID:        c.id,
		IP:        ap.Addr(),
		Port:      int(ap.Port()),
		LocalAddr: raw.LocalAddr().String(),
		Started:   now,
		Log:       c.log,
		Report:    &verdict.Report{},
	}
	return c
}

// rawReader reads from the current transport (plain or TLS).
type rawReader struct{ c *sconn }

func (r rawReader) Read(p []byte) (int, error) { return r.c.rw.Read(p) }

func (c *sconn) LocalAddr() net.Addr  { return c.raw.LocalAddr() }
func (c *sconn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// Deadlines are managed by sconn itself; go-smtp's (ReadTimeout and
// WriteTimeout are zero) are ignored.
func (c *sconn) SetDeadline(time.Time) error      { return nil }
func (c *sconn) SetReadDeadline(time.Time) error  { return nil }
func (c *sconn) SetWriteDeadline(time.Time) error { return nil }

func (c *sconn) Close() error {
	c.closed.Do(func() {
		c.cancel()
		c.srv.untrack(c)
		reason := c.endReason
		if reason == "" {
			reason = "closed"
		}
		c.log.Info("smtp connection closed", "duration", time.Since(c.started).Round(time.Millisecond),
			"helo", c.pc.Helo, "tls", c.tlsOn, "transactions", c.txns, "errors", c.errors, "reason", reason)
	})
	return c.raw.Close()
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// beginIdle marks the connection as waiting for a command and sets the
// per-line deadline. It reports false when the server is shutting down.
func (c *sconn) beginIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv.closing.Load() {
		return false
	}
	c.idle = true
	c.raw.SetReadDeadline(minTime(time.Now().Add(c.srv.cfg.CommandTimeout), c.sessionEnd))
	return true
}

func (c *sconn) endIdle() {
	c.mu.Lock()
	c.idle = false
	c.mu.Unlock()
}

// poke wakes a connection waiting for a command so it sees the shutdown.
func (c *sconn) poke() {
	c.mu.Lock()
	if c.idle {
		c.raw.SetReadDeadline(time.Now())
	}
	c.mu.Unlock()
}

// Read gives go-smtp its input: one command line per call in command mode,
// message bytes up to the end-of-data line in DATA mode.
func (c *sconn) Read(p []byte) (int, error) {
	if len(c.pend) > 0 {
		n := copy(p, c.pend)
		c.pend = c.pend[n:]
		return n, nil
	}
	if c.dead != nil {
		return 0, c.dead
	}
	if c.dataMode {
		return c.readData(p)
	}
	for {
		if c.inject != "" {
			line := c.inject
			c.inject = ""
			c.lastVerb = line[:4]
			return c.give(p, []byte(line)), nil
		}
		if c.heloSeen && !c.heloRan {
			c.runHelo()
		}
		if c.errors >= c.srv.cfg.MaxErrors {
			c.endReason = "too many errors"
			c.reply(421, [3]int{4, 7, 0}, "Too many errors, closing connection", "max_errors", false)
			c.dead = io.EOF
			return 0, io.EOF
		}
		line, tooLong, err := c.readCommandLine()
		if err != nil {
			c.dead = io.EOF
			return 0, io.EOF
		}
		if tooLong {
			c.reply(500, [3]int{5, 5, 2}, "Line too long", "line_length", true)
			continue
		}
		if out := c.command(line); out != nil {
			return c.give(p, out), nil
		}
		if c.dead != nil {
			return 0, c.dead
		}
	}
}

func (c *sconn) give(p, line []byte) int {
	n := copy(p, line)
	if n < len(line) {
		c.pend = append(c.pend[:0], line[n:]...)
	}
	return n
}

// readCommandLine reads one line under one deadline. Lines longer than the
// limit are consumed and reported as tooLong. Any error is final: the
// reply (timeout, shutdown) has been written when there is one to write.
func (c *sconn) readCommandLine() (line []byte, tooLong bool, err error) {
	if !c.beginIdle() {
		c.endReason = "shutdown"
		c.reply(421, [3]int{4, 3, 2}, "Service shutting down, try again later", "shutdown", false)
		return nil, false, io.EOF
	}
	defer c.endIdle()
	max := c.srv.cfg.MaxCommandLineLength
	c.line = c.line[:0]
	for {
		frag, err := c.br.ReadSlice('\n')
		if !tooLong {
			if len(c.line)+len(frag) > max {
				tooLong = true
			} else {
				c.line = append(c.line, frag...)
			}
		}
		if err == nil {
			return c.line, tooLong, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			switch {
			case c.srv.closing.Load():
				c.endReason = "shutdown"
				c.reply(421, [3]int{4, 3, 2}, "Service shutting down, try again later", "shutdown", false)
			case !time.Now().Before(c.sessionEnd):
				c.endReason = "session timeout"
				c.reply(421, [3]int{4, 4, 2}, "Session time limit exceeded, closing connection", "timeout", false)
			default:
				c.endReason = "command timeout"
				c.reply(421, [3]int{4, 4, 2}, "Timeout waiting for a command, closing connection", "timeout", false)
			}
		case errors.Is(err, io.EOF):
			if c.endReason == "" {
				c.endReason = "client closed"
			}
		default:
			if c.endReason == "" {
				c.endReason = "read error"
			}
		}
		return nil, false, err
	}
}

var crlf = []byte("\r\n")

// command looks at one command line. It returns the canonical line to hand
// to go-smtp, or nil when sconn answered the command itself.
func (c *sconn) command(line []byte) []byte {
	line = bytes.TrimRight(line, "\r\n")
	line = bytes.TrimLeft(line, " \t")
	verbB, arg, _ := bytes.Cut(line, []byte(" "))
	arg = bytes.TrimSpace(arg)
	verb := string(bytes.ToUpper(verbB))
	c.lastVerb = verb
	if verb != "MAIL" && verb != "RCPT" { // their paths get the address parser's 501
		for _, b := range line {
			if b < ' ' && b != '\t' || b == 0x7f {
				c.reply(500, [3]int{5, 5, 2}, "Invalid characters in command", "syntax", true)
				return nil
			}
		}
	}
	switch verb {
	case "":
		c.reply(500, [3]int{5, 5, 2}, "Error: bad syntax", "syntax", true)
		return nil
	case "HELO", "EHLO":
		if c.junkCommand() {
			return nil
		}
		if len(arg) == 0 { // go-smtp's text would say HELO for both
			c.reply(501, [3]int{5, 5, 4}, "Syntax: "+verb+" hostname", "syntax", true)
			return nil
		}
		h, _, _ := bytes.Cut(arg, []byte(" "))
		c.pendingHelo = string(h)
	case "MAIL", "RCPT":
		prefix := "FROM:"
		if verb == "RCPT" {
			prefix = "TO:"
			c.rcptTried++
		}
		if len(arg) >= len(prefix) && bytes.EqualFold(arg[:len(prefix)], []byte(prefix)) {
			pa, rest, kind := parsePath(string(arg[len(prefix):]), verb == "RCPT")
			switch kind {
			case addrSyntax:
				if verb == "RCPT" {
					c.reply(501, [3]int{5, 1, 3}, "Bad recipient address syntax", "address_syntax", true)
				} else {
					c.reply(501, [3]int{5, 1, 7}, "Bad sender address syntax", "address_syntax", true)
				}
				return nil
			case addrRelay:
				c.reply(550, [3]int{5, 7, 1}, "Relaying denied", "relay", true)
				return nil
			}
			if !c.checkParams(verb, rest, pa) {
				return nil
			}
			c.cmdAddr = pa
			// Hand go-smtp a canonical path: it has no business seeing the
			// forms it would parse leniently.
			canon := "<" + pa.Addr.Raw + ">"
			out := make([]byte, 0, len(verb)+len(prefix)+len(canon)+len(rest)+3)
			out = append(out, verb...)
			out = append(out, ' ')
			out = append(out, prefix...)
			out = append(out, canon...)
			out = append(out, rest...)
			return append(out, crlf...)
		}
	case "DATA", "QUIT":
	case "RSET", "NOOP":
		if c.junkCommand() {
			return nil
		}
	case "VRFY":
		// Never enumerates users (RFC 5321 3.5.3 allows 252).
		if c.junkCommand() {
			return nil
		}
		if len(arg) == 0 {
			c.reply(501, [3]int{5, 5, 4}, "Syntax: VRFY address", "syntax", true)
		} else {
			c.reply(252, [3]int{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery", "", false)
		}
		return nil
	case "HELP":
		if c.junkCommand() {
			return nil
		}
		c.reply(214, [3]int{2, 0, 0}, "See RFC 5321 (https://www.rfc-editor.org/rfc/rfc5321)", "", false)
		return nil
	case "STARTTLS":
		c.startTLS(len(arg) > 0)
		return nil
	case "AUTH", "BDAT", "EXPN", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML", "LHLO":
		c.reply(502, [3]int{5, 5, 1}, "Command not implemented", "unknown_command", true)
		return nil
	default:
		// XCLIENT, XFORWARD and anything else: unknown, grants nothing.
		c.reply(500, [3]int{5, 5, 2}, "Error: command not recognized", "unknown_command", true)
		return nil
	}
	out := make([]byte, 0, len(verb)+len(arg)+3)
	out = append(out, verb...)
	if len(arg) > 0 {
		out = append(out, ' ')
		out = append(out, arg...)
	}
	return append(out, crlf...)
}

// junkCommand counts a command that moves no mail forward (NOOP, RSET,
// VRFY, HELP, HELO/EHLO). Past max_junk_commands since the last accepted
// message it answers "421 4.7.0", ends the session and reports true.
func (c *sconn) junkCommand() bool {
	c.junk++
	if c.junk <= c.srv.cfg.MaxJunkCommands {
		return false
	}
	c.endReason = "too many junk commands"
	c.reply(421, [3]int{4, 7, 0}, "Too many commands without mail, closing connection", "junk_commands", false)
	c.dead = io.EOF
	return true
}

// checkParams vets the ESMTP parameters of MAIL and RCPT (rest, after the
// path) before go-smtp sees them, and the envelope's character set: only
// what Moat advertises is accepted (SIZE, BODY, SMTPUTF8 on MAIL; nothing
// on RCPT, as DSN is not offered). It answers and reports false on refusal.
func (c *sconn) checkParams(verb, rest string, pa parsedAddr) bool {
	seen := map[string]bool{}
	utf8Param := false
	for _, p := range strings.Fields(rest) {
		key, val, hasVal := strings.Cut(p, "=")
		key = strings.ToUpper(key)
		if !esmtpKeyword(key) || seen[key] {
			c.reply(501, [3]int{5, 5, 4}, "Bad parameter syntax", "syntax", true)
			return false
		}
		seen[key] = true
		if verb == "RCPT" {
			c.reply(555, [3]int{5, 5, 4}, "Unsupported option: "+cleanText(key), "syntax", true)
			return false
		}
		switch key {
		case "SIZE":
			n, err := strconv.ParseUint(val, 10, 64)
			if !hasVal || len(val) > 20 || err != nil && !errors.Is(err, strconv.ErrRange) {
				c.reply(501, [3]int{5, 5, 4}, "Bad SIZE syntax", "syntax", true)
				return false
			}
			// 1*20DIGIT (RFC 1870): a value past uint64 is merely too big.
			if err != nil || n > uint64(c.srv.cfg.MaxMessageSize) {
				c.reply(552, [3]int{5, 3, 4}, "Message size exceeds fixed limit", "size", false)
				return false
			}
		case "BODY":
			if v := strings.ToUpper(val); v != "7BIT" && v != "8BITMIME" {
				c.reply(501, [3]int{5, 5, 4}, "Bad BODY syntax", "syntax", true)
				return false
			}
		case "SMTPUTF8":
			if hasVal {
				c.reply(501, [3]int{5, 5, 4}, "Bad SMTPUTF8 syntax", "syntax", true)
				return false
			}
			utf8Param = true
		default:
			c.reply(555, [3]int{5, 5, 4}, "Unsupported option: "+cleanText(key), "syntax", true)
			return false
		}
	}
	if verb == "MAIL" && !utf8Param && !isASCII(pa.Addr.Raw) {
		c.reply(553, [3]int{5, 6, 7}, "Must declare SMTPUTF8 to send unicode address", "smtputf8", true)
		return false
	}
	return true
}

// esmtpKeyword: ALPHA / DIGIT followed by ALPHA / DIGIT / "-" (RFC 5321).
func esmtpKeyword(k string) bool {
	if k == "" || k[0] == '-' || len(k) > 32 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func (c *sconn) startTLS(hasArg bool) {
	switch {
	case hasArg:
		c.reply(501, [3]int{5, 5, 4}, "Syntax error (no parameters allowed)", "syntax", true)
		return
	case c.tlsOn:
		c.reply(503, [3]int{5, 5, 1}, "TLS already active", "sequence", true)
		return
	case c.srv.tls == nil:
		c.reply(502, [3]int{5, 5, 1}, "STARTTLS not available", "unknown_command", true)
		return
	}
	c.reply(220, [3]int{2, 0, 0}, "Ready to start TLS", "", false)
	// Anything the client pipelined after STARTTLS is plaintext injection
	// (CVE-2011-0411 and friends): drop it.
	if n := c.br.Buffered(); n > 0 {
		c.br.Discard(n)
		c.log.Info("discarded data pipelined after STARTTLS", "bytes", n)
	}
	tc := tls.Server(c.raw, c.srv.tls)
	c.raw.SetDeadline(minTime(time.Now().Add(c.srv.cfg.CommandTimeout), c.sessionEnd))
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Info("TLS handshake failed", "err", err)
		c.endReason = "tls handshake failed"
		c.dead = io.EOF
		return
	}
	c.rw = tc
	c.br.Reset(rawReader{c})
	c.tlsOn = true
	c.pc.TLS = true
	st := tc.ConnectionState()
	c.tlsDesc = tls.VersionName(st.Version) + " with cipher " + tls.CipherSuiteName(st.CipherSuite)
	c.heloSeen, c.heloRan = false, false
	// Reset go-smtp's transaction; its reply is not the client's business.
	c.inject = "RSET\r\n"
	c.swallow = 1
}

// runHelo runs the HELO checks once per accepted HELO/EHLO, over a fresh
// connection report holding the connection results (so a second EHLO, as
// after STARTTLS, does not count the HELO checks twice).
func (c *sconn) runHelo() {
	c.heloRan = true
	rep := &verdict.Report{}
	for _, r := range c.connResults {
		rep.Add(r)
	}
	c.pc.Report = rep
	func() {
		defer func() {
			if p := recover(); p != nil {
				c.log.Error("panic in HELO checks", "panic", p)
			}
		}()
		c.heloDec = c.srv.runner.Helo(c.ctx, c.pc)
	}()
}

// readData hands go-smtp message bytes, never beyond the end-of-data line.
func (c *sconn) readData(p []byte) (int, error) {
	if c.br.Buffered() == 0 {
		if _, err := c.br.Peek(1); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.dtimout = true
				c.endReason = "data timeout"
			} else if c.endReason == "" {
				c.endReason = "client closed during DATA"
			}
			c.dead = io.EOF
			return 0, err
		}
	}
	n := min(c.br.Buffered(), len(p))
	buf, _ := c.br.Peek(n)
	n, done := c.scan(buf)
	copy(p, buf[:n])
	c.br.Discard(n)
	if done {
		c.dataMode = false
		c.dataEndAt = time.Now()
	}
	return n, nil
}

// States of go-smtp's dataReader, mirrored exactly.
const (
	sBeginLine = iota
	sDot
	sDotCR
	sCR
	sData
)

// scan runs the end-of-data state machine (identical to go-smtp's
// dataReader, so both agree where the message ends) and the smuggling and
// line-length checks over buf. It returns how many bytes belong to the
// message (including the end line) and whether the end was reached.
func (c *sconn) scan(buf []byte) (int, bool) {
	st, prevCR, lineLen := c.dstate, c.dprevCR, c.dline
	maxLine := c.srv.cfg.MaxLineLength
	f := &c.dflags
	for i := 0; i < len(buf); i++ {
		b := buf[i]
		if st == sData && b > '\r' {
			// Fast path: ordinary text in the middle of a line.
			j, or := i+1, b
			for j < len(buf) && buf[j] > '\r' {
				or |= buf[j]
				j++
			}
			f.eightBit = f.eightBit || or >= 0x80
			if prevCR {
				f.bareCR = true
			}
			lineLen += j - i
			prevCR = false
			i = j - 1
			continue
		}
		if prevCR && b != '\n' {
			f.bareCR = true
		}
		switch b {
		case '\n':
			if !prevCR {
				f.bareLF = true
			}
			if lineLen+1 > maxLine {
				f.longLine = true
			}
			lineLen = -1
		case 0:
			f.nul = true
		default:
			if b >= 0x80 {
				f.eightBit = true
			}
		}
		lineLen++
		prevCR = b == '\r'
		switch st {
		case sBeginLine:
			switch b {
			case '.':
				st = sDot
				// The dot doubled for transparency is not part of the
				// line (RFC 5321 4.5.3.1.6).
				lineLen--
			case '\r':
				st = sCR
			default:
				st = sData
			}
		case sDot:
			if b == '\r' {
				st = sDotCR
			} else {
				st = sData
			}
		case sDotCR:
			if b == '\n' {
				c.dstate, c.dprevCR, c.dline = sBeginLine, false, 0
				return i + 1, true
			}
			st = sData
		case sCR:
			if b == '\n' {
				st = sBeginLine
			} else {
				st = sData
			}
		case sData:
			if b == '\r' {
				st = sCR
			}
		}
	}
	if lineLen > maxLine {
		f.longLine = true
	}
	c.dstate, c.dprevCR, c.dline = st, prevCR, lineLen
	return len(buf), false
}

func (c *sconn) startData() {
	c.dataMode = true
	c.dstate, c.dprevCR, c.dline = sBeginLine, false, 0
	c.dflags = dataFlags{}
	c.dtimout = false
	c.raw.SetReadDeadline(minTime(time.Now().Add(c.srv.cfg.DataTimeout), c.sessionEnd))
}

// reply writes one reply produced by sconn itself.
func (c *sconn) reply(code int, enh [3]int, text, reason string, countErr bool) {
	c.reason, c.countErr = reason, countErr
	b := make([]byte, 0, 16+len(text))
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(enh[0]), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(enh[1]), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(enh[2]), 10)
	b = append(b, ' ')
	b = append(b, text...)
	b = append(b, crlf...)
	c.Write(b)
}

// Write receives every reply (go-smtp writes one line per call).
func (c *sconn) Write(p []byte) (int, error) {
	if !c.greeted {
		c.greeted = true
		if !c.onConnect() {
			return len(p), nil
		}
	}
	out := p
	if bytes.Count(p, crlf) > 1 {
		out = nil
		for rest := p; len(rest) > 0; {
			line, r, _ := bytes.Cut(rest, crlf)
			rest = r
			out = append(out, c.filter(append(line, crlf...))...)
		}
	} else {
		out = c.filter(p)
	}
	if len(out) == 0 {
		return len(p), nil
	}
	c.raw.SetWriteDeadline(minTime(time.Now().Add(c.srv.cfg.CommandTimeout), c.sessionEnd.Add(5*time.Second)))
	if _, err := c.rw.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// filter applies soft bounce, trims EHLO capabilities, counts errors and
// tracks state from one reply line. It returns what to send.
func (c *sconn) filter(line []byte) []byte {
	if len(line) < 5 || !isDigit(line[0]) || !isDigit(line[1]) || !isDigit(line[2]) || (line[3] != ' ' && line[3] != '-') {
		return line
	}
	code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	final := line[3] == ' '
	if c.swallow > 0 {
		if final {
			c.swallow--
		}
		return nil
	}
	if code == 250 && !final {
		capa := string(bytes.TrimRight(line[4:], "\r\n"))
		if capa == "CHUNKING" || capa == "STARTTLS" && (c.tlsOn || c.srv.tls == nil) {
			return nil
		}
		if strings.HasPrefix(capa, "SIZE ") {
			return []byte("250-SIZE " + strconv.FormatInt(c.srv.cfg.MaxMessageSize, 10) + "\r\n")
		}
		if c.lastVerb == "EHLO" && strings.HasPrefix(capa, "Hello ") {
			// RFC 5321 4.1.1.1: the first line names the server. The
			// client's name is echoed as printable ASCII only (4.2:
			// reply text is a textstring).
			return []byte("250-" + c.srv.cfg.Hostname + " Hello " + replyEcho(c.pendingHelo) + "\r\n")
		}
	}
	if code == 502 && final && c.reason == "" {
		// go-smtp answers a command out of sequence with 502 (not
		// implemented); RFC 5321 says 503 (bad sequence).
		switch c.lastVerb {
		case "MAIL":
			line, code = []byte("503 5.5.1 Error: send HELO/EHLO first\r\n"), 503
		case "RCPT":
			line, code = []byte("503 5.5.1 Error: need MAIL command\r\n"), 503
		case "DATA":
			switch {
			case c.sess == nil || c.sess.txn == nil:
				line, code = []byte("503 5.5.1 Error: need MAIL command\r\n"), 503
			case c.rcptTried > 0:
				// Every pipelined RCPT was refused (RFC 2920 3.1).
				line, code = []byte("554 5.5.1 Error: no valid recipients\r\n"), 554
			default:
				line, code = []byte("503 5.5.1 Error: need RCPT command\r\n"), 503
			}
		}
	}
	if !final {
		return line
	}
	switch {
	case code == 354:
		c.startData()
		// With an enhanced code like every other reply (go-smtp has none;
		// clients read only the three digits).
		line = []byte("354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n")
	case code == 250 && c.lastVerb == "DATA":
		c.junk = 0 // a message was accepted
	case code == 250 && (c.lastVerb == "HELO" || c.lastVerb == "EHLO"):
		if c.lastVerb == "HELO" {
			// go-smtp answers "250 2.0.0 Hello NAME": RFC 5321 4.1.1.1
			// wants the server's own name first, and RFC 2034 4 puts no
			// enhanced code on the response to HELO.
			line = []byte("250 " + c.srv.cfg.Hostname + " Hello " + replyEcho(c.pendingHelo) + "\r\n")
		}
		c.heloSeen, c.heloRan = true, false
		c.esmtp = c.lastVerb == "EHLO"
		c.pc.Helo = c.pendingHelo
	case code >= 400 && code < 600:
		// Enhanced code "x.y.z" follows the code when present.
		subj5 := len(line) > 8 && line[5] == '.' && line[6] == '5' && line[7] == '.'
		if c.srv.cfg.SoftBounce && code >= 500 && !subj5 && code != 421 {
			line = append([]byte(nil), line...)
			line[0] = '4'
			if len(line) > 5 && line[4] == '5' && line[5] == '.' {
				line[4] = '4'
			}
			code -= 100
		}
		reason := c.reason
		if reason == "" {
			reason = "protocol"
			if subj5 {
				c.countErr = true
			}
		}
		if c.countErr {
			c.errors++
		}
		c.srv.metrics.reject(reason, code)
	}
	c.reason, c.countErr = "", false
	c.lastReply = string(bytes.TrimRight(line, "\r\n"))
	return line
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// replyEcho makes client-supplied text (the HELO name) safe to echo in a
// reply: printable US-ASCII only (RFC 5321 4.2 textstring), at most 255
// octets.
func replyEcho(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	b := []byte(s)
	for i, ch := range b {
		if ch < ' ' || ch > '~' {
			b[i] = '?'
		}
	}
	return string(b)
}

// onConnect runs before the greeting: SYN capture, the optional greeting
// pause (pregreet detection) and the connection checks. It reports false
// when the connection is to be dropped (the 421 has been written).
func (c *sconn) onConnect() bool {
	c.pc.SYN = savedSYN(c.raw)
	if d := c.srv.cfg.GreetPause; d > 0 {
		c.raw.SetWriteDeadline(time.Now().Add(c.srv.cfg.CommandTimeout))
		if _, err := c.raw.Write([]byte("220-" + c.srv.cfg.Hostname + " ESMTP\r\n")); err != nil {
			c.dead = io.EOF
			return false
		}
		c.raw.SetReadDeadline(time.Now().Add(d))
		_, err := c.br.Peek(1)
		var ne net.Error
		switch {
		case err == nil:
			// Whatever the client sent stays buffered and is replayed to
			// go-smtp as its first command(s).
			c.pc.Pregreet = true
		case errors.As(err, &ne) && ne.Timeout():
		default:
			c.endReason = "client closed during greeting"
			c.dead = io.EOF
			return false
		}
	}
	var dec policy.Decision
	func() {
		defer func() {
			if p := recover(); p != nil {
				c.log.Error("panic in connection checks", "panic", p)
			}
		}()
		dec = c.srv.runner.Conn(c.ctx, c.pc)
	}()
	c.connResults = c.pc.Report.Results()
	if dec.Action == verdict.Drop {
		r := dec.Reply
		if r.Code/100 != 4 && r.Code/100 != 5 {
			r = verdict.Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Text: "Service not available, closing connection"}
		}
		r.Code, r.Enhanced[0] = 421, 4
		c.log.Info("connection dropped by checks", "reason", dec.Reason, "score", dec.Score)
		c.srv.metrics.connRefused.WithLabelValues("drop").Inc()
		c.endReason = "dropped"
		c.raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.rw.Write([]byte(verdict.Reply{Code: 421, Enhanced: r.Enhanced, Text: cleanText(r.Text)}.String() + "\r\n"))
		c.dead = io.EOF
		return false
	}
	return true
}
