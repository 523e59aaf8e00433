package relay

// A small SMTP client. go-smtp's smtp.Client cannot be used for delivery
// to backends: it has no way to send XCLIENT or XFORWARD (no raw command
// access), cannot repeat EHLO after XCLIENT's new 220 greeting, and offers no
// STARTTLS step separate from the greeting. This client does only what the
// relay needs: greeting, EHLO/HELO, STARTTLS, XCLIENT/XFORWARD, pipelined
// MAIL/RCPT, DATA with our own normalising dot-stuffer, RSET and QUIT, each
// with its own timeout.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"moat.dev/moat/internal/verdict"
)

// smtpConn is one connection to a backend.
type smtpConn struct {
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	ext  map[string]string // EHLO keywords (upper case) -> parameters
	tls  bool
	addr string // host:port

	cfg      *Config
	messages int // transactions completed on this connection
	// dirty is set while a transaction may be open on the backend (MAIL
	// sent, no final reply to the message yet): only then does park send
	// RSET, saving a round trip per message on a reused connection.
	dirty     bool
	xclientID string // the client XCLIENT made this session stand for, if any
	idleAt    time.Time
}

// stageError is a failure to talk to a backend at all (connect, greeting,
// EHLO, TLS): the relay tries the next backend.
type stageError struct {
	reply verdict.Reply
	err   error
}

func (e *stageError) Error() string { return e.reply.String() + ": " + fmt.Sprint(e.err) }
func (e *stageError) Unwrap() error { return e.err }

func synth(code int, enh [3]int, text string) verdict.Reply {
	return verdict.Reply{Code: code, Enhanced: enh, Text: text}
}

var errProtocol = errors.New("relay: malformed SMTP reply")

// readReply reads one (possibly multi-line) reply within timeout.
func (c *smtpConn) readReply(timeout time.Duration) (verdict.Reply, []string, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	var lines []string
	code := 0
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return verdict.Reply{}, nil, errProtocol
			}
			return verdict.Reply{}, nil, err
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 {
			return verdict.Reply{}, nil, errProtocol
		}
		n, err := strconv.Atoi(s[:3])
		if err != nil || n < 200 || n > 599 || (code != 0 && n != code) {
			return verdict.Reply{}, nil, errProtocol
		}
		code = n
		text := ""
		if len(s) > 4 {
			text = s[4:]
		}
		lines = append(lines, text)
		if len(s) == 3 || s[3] == ' ' {
			break
		}
		if s[3] != '-' || len(lines) > 1000 {
			return verdict.Reply{}, nil, errProtocol
		}
	}
	return parseReply(code, lines), lines, nil
}

// parseReply builds a Reply; the enhanced code comes from the first line
// (RFC 2034) or is derived from the reply class.
func parseReply(code int, lines []string) verdict.Reply {
	r := verdict.Reply{Code: code, Enhanced: [3]int{code / 100, 0, 0}}
	for i, l := range lines {
		if enh, rest, ok := cutEnhanced(l, code); ok {
			if i == 0 {
				r.Enhanced = enh
			}
			lines[i] = rest
		}
	}
	text := strings.Join(lines, " ")
	if len(text) > 400 {
		text = text[:400]
	}
	r.Text = sanitize(text)
	return r
}

func cutEnhanced(l string, code int) ([3]int, string, bool) {
	f, rest, _ := strings.Cut(l, " ")
	parts := strings.Split(f, ".")
	if len(parts) != 3 {
		return [3]int{}, l, false
	}
	var e [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return [3]int{}, l, false
		}
		e[i] = n
	}
	if e[0] != code/100 {
		return [3]int{}, l, false
	}
	return e, rest, true
}

// sanitize keeps printable ASCII only (reply texts go into logs, DSNs and
// the queue's envelope).
func sanitize(s string) string {
	ok := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// cmd sends one command line and reads the reply.
func (c *smtpConn) cmd(timeout time.Duration, line string) (verdict.Reply, error) {
	c.nc.SetWriteDeadline(time.Now().Add(timeout))
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		return verdict.Reply{}, err
	}
	r, _, err := c.readReply(timeout)
	return r, err
}

// dialOptions is what a connection is set up for.
type dialOptions struct {
	tlsMode string // "opportunistic", "required", "none"
	tlsConf *tls.Config
}

// dial connects to addr and runs greeting, EHLO and STARTTLS. Any failure
// is a *stageError with a synthesised temporary reply (or the backend's own
// reply for a refused greeting or EHLO).
func dial(ctx context.Context, cfg *Config, addr string, o dialOptions) (*smtpConn, error) {
	d := net.Dialer{Timeout: cfg.ConnectTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, &stageError{synth(451, [3]int{4, 4, 1}, "delivery interrupted"), err}
		}
		return nil, &stageError{synth(451, [3]int{4, 4, 1}, "backend unreachable"), err}
	}
	c := &smtpConn{nc: nc, br: bufio.NewReaderSize(nc, 4<<10), bw: bufio.NewWriterSize(nc, 32<<10), addr: addr, cfg: cfg}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(timeInPast) })
	defer stop()
	fail := func(r verdict.Reply, err error) (*smtpConn, error) {
		nc.Close()
		return nil, &stageError{r, err}
	}
	g, _, err := c.readReply(cfg.GreetingTimeout)
	if err != nil {
		return fail(synth(451, [3]int{4, 4, 2}, "backend greeting not received"), err)
	}
	if g.Code != 220 {
		return fail(g, fmt.Errorf("greeting %d", g.Code))
	}
	if r, err := c.hello(cfg.Hostname); err != nil {
		return fail(synth(451, [3]int{4, 4, 2}, "backend connection lost during EHLO"), err)
	} else if r.Code/100 != 2 {
		return fail(r, fmt.Errorf("EHLO refused: %d", r.Code))
	}
	if o.tlsMode == "none" {
		return c, nil
	}
	if _, ok := c.ext["STARTTLS"]; !ok {
		if o.tlsMode == "required" {
			c.quit()
			return nil, &stageError{synth(451, [3]int{4, 7, 10}, "TLS required but backend does not offer STARTTLS"), errors.New("no STARTTLS")}
		}
		return c, nil
	}
	r, err := c.cmd(cfg.CommandTimeout, "STARTTLS")
	if err != nil {
		return fail(synth(451, [3]int{4, 4, 2}, "backend connection lost during STARTTLS"), err)
	}
	if r.Code != 220 {
		if o.tlsMode == "required" {
			c.quit()
			return nil, &stageError{synth(451, [3]int{4, 7, 10}, "TLS required but backend refused STARTTLS"), errors.New("STARTTLS refused")}
		}
		return c, nil // RFC 3207: continue in plaintext
	}
	tc := tls.Client(nc, o.tlsConf)
	tc.SetDeadline(time.Now().Add(cfg.CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(synth(451, [3]int{4, 7, 5}, "TLS handshake with backend failed"), err)
	}
	tc.SetDeadline(time.Time{})
	c.nc = tc
	c.br = bufio.NewReaderSize(tc, 4<<10)
	c.bw = bufio.NewWriterSize(tc, 32<<10)
	c.tls = true
	if r, err := c.hello(cfg.Hostname); err != nil {
		return fail(synth(451, [3]int{4, 4, 2}, "backend connection lost during EHLO"), err)
	} else if r.Code/100 != 2 {
		return fail(r, fmt.Errorf("EHLO after STARTTLS refused: %d", r.Code))
	}
	return c, nil
}

// hello sends EHLO (HELO if EHLO is not recognised) and records the
// extensions.
func (c *smtpConn) hello(name string) (verdict.Reply, error) {
	c.nc.SetWriteDeadline(time.Now().Add(c.cfg.CommandTimeout))
	c.bw.WriteString("EHLO " + name + "\r\n")
	if err := c.bw.Flush(); err != nil {
		return verdict.Reply{}, err
	}
	r, lines, err := c.readReply(c.cfg.CommandTimeout)
	if err != nil {
		return r, err
	}
	c.ext = map[string]string{}
	if r.Code == 250 {
		for _, l := range lines[1:] {
			k, v, _ := strings.Cut(l, " ")
			c.ext[strings.ToUpper(k)] = v
		}
		return r, nil
	}
	if r.Code == 500 || r.Code == 502 {
		return c.cmd(c.cfg.CommandTimeout, "HELO "+name)
	}
	return r, nil
}

func (c *smtpConn) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// quit says goodbye (briefly) and closes.
func (c *smtpConn) quit() {
	c.nc.SetDeadline(time.Now().Add(5 * time.Second))
	c.bw.WriteString("QUIT\r\n")
	if c.bw.Flush() == nil {
		c.readReply(5 * time.Second)
	}
	c.nc.Close()
}

// xtext encodes an XCLIENT/XFORWARD attribute value (RFC 3461 xtext).
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
		} else {
			b.WriteByte(ch)
		}
	}
	return b.String()
}

// validHelo reports whether s can be sent as an EHLO argument.
func validHelo(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// timeInPast is a deadline that makes blocked I/O return at once.
var timeInPast = time.Unix(1, 0)
