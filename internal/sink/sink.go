// Package sink is a tiny, fast SMTP server that writes every message it
// accepts to a Maildir. It is Moat's demo backend (`moat sink`) and the SMTP
// peer that tests of other packages deliver to.
//
// Each stored file is the message exactly as received after SMTP
// dot-unstuffing (CRLF line endings, byte for byte), preceded by a block of
// envelope fields the sink adds:
//
//	Return-Path: <sender>
//	X-Sink-Rcpt: <rcpt>          (one per envelope recipient)
//	Delivered-To: rcpt           (one per envelope recipient)
//	X-Sink-XClient: ADDR=… NAME=… (only if the client sent XCLIENT)
//	X-Sink-XForward: ADDR=…       (only if the client sent XFORWARD)
//	X-Sink-TLS: TLS1.3            (only if the session used STARTTLS)
//	X-Sink-Id: ID                 (always last)
//
// Split separates that block from the message again.
//
// The SMTP engine is written here (on net/textproto-style line handling)
// rather than on go-smtp's server, because the sink must advertise and
// implement XCLIENT and XFORWARD, which go-smtp's server has no hook for, and
// must hand the DATA bytes through unchanged (no CRLF→LF conversion).
package sink

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a sink. The zero value plus Maildir (or NoStore) works.
type Config struct {
	// Addr is the listen address; default "127.0.0.1:0" (a free port).
	Addr string
	// Maildir is the directory messages are written to (tmp/, new/ and
	// cur/ are created). Required unless NoStore.
	Maildir string
	// Fsync makes each message file durable before the 250 reply.
	Fsync bool
	// NoStore counts messages without writing them (for benchmarks).
	NoStore bool
	// XClient advertises XCLIENT and XFORWARD and records the attributes
	// received in X-Sink-XClient / X-Sink-XForward fields.
	XClient bool
	// RejectRcpt, if set, is a regular expression; matching recipients get
	// "550 5.1.1 no such user".
	RejectRcpt string
	// TempFail answers 451 4.3.0 to MAIL (and so to every transaction).
	TempFail bool
	// TLS, if set, makes the sink offer STARTTLS with this configuration.
	TLS *tls.Config
	// NoSMTPUTF8 stops the sink advertising SMTPUTF8 (RFC 6531) so clients'
	// handling of its absence can be tested.
	NoSMTPUTF8 bool
	// Hostname is the name in the greeting; default "sink.moat.test".
	Hostname string
	// MaxSize is the SIZE limit advertised and enforced; default 50 MiB.
	MaxSize int64
	// OnMessage, if set, is called after each accepted message.
	OnMessage func(Delivery)
	// Log receives session errors; default: discard.
	Log *slog.Logger
}

// Delivery describes one accepted message.
type Delivery struct {
	ID       string
	From     string
	Rcpts    []string
	Size     int64  // bytes of the message as received
	Path     string // file in new/, "" with NoStore
	Remote   string // the TCP peer address
	TLS      bool
	XClient  map[string]string // XCLIENT attributes (decoded), nil if none
	XForward map[string]string // XFORWARD attributes (decoded), nil if none
	EightBit bool              // BODY=8BITMIME
	SMTPUTF8 bool
}

// Server is a running sink.
type Server struct {
	cfg      Config
	ln       net.Listener
	reject   *regexp.Regexp
	log      *slog.Logger
	hostname string
	pid      string

	count   atomic.Int64
	accepts atomic.Int64
	seq     atomic.Uint64

	mu     sync.Mutex
	paths  []string
	dels   []Delivery
	conns  map[net.Conn]struct{}
	closed bool
	cond   *sync.Cond
	wg     sync.WaitGroup
}

// Start listens and serves in the background until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "sink.moat.test"
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = 50 << 20
	}
	s := &Server{cfg: cfg, log: cfg.Log, hostname: cfg.Hostname, pid: strconv.Itoa(os.Getpid()), conns: map[net.Conn]struct{}{}}
	s.cond = sync.NewCond(&s.mu)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.RejectRcpt != "" {
		re, err := regexp.Compile(cfg.RejectRcpt)
		if err != nil {
			return nil, fmt.Errorf("sink: reject-rcpt: %w", err)
		}
		s.reject = re
	}
	if !cfg.NoStore {
		if cfg.Maildir == "" {
			return nil, errors.New("sink: maildir: required unless no-store")
		}
		for _, d := range []string{"tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(cfg.Maildir, d), 0o755); err != nil {
				return nil, fmt.Errorf("sink: maildir: %w", err)
			}
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("sink: listen: %w", err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr is the address the sink listens on (host:port).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Count is the number of messages accepted so far.
func (s *Server) Count() int { return int(s.count.Load()) }

// Accepts is the number of TCP connections accepted so far.
func (s *Server) Accepts() int { return int(s.accepts.Load()) }

// Messages returns the paths of the stored messages, in acceptance order.
func (s *Server) Messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

// Deliveries returns every accepted message's envelope, in acceptance order.
func (s *Server) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Delivery(nil), s.dels...)
}

// Wait blocks until at least n messages were accepted or timeout passes,
// and reports whether n was reached.
func (s *Server) Wait(n int, timeout time.Duration) bool {
	t := time.AfterFunc(timeout, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	defer t.Stop()
	deadline := time.Now().Add(timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.dels) < n && !s.closed && time.Now().Before(deadline) {
		s.cond.Wait()
	}
	return len(s.dels) >= n
}

// Close stops listening, closes open sessions and waits for them to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepts.Add(1)
		go func() {
			defer s.wg.Done()
			sess := &session{s: s, conn: c}
			sess.run()
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

type session struct {
	s    *Server
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	tls  string

	greeted  bool
	xclient  map[string]string
	xforward map[string]string
	from     *string
	rcpts    []string
	eightBit bool
	utf8     bool
}

const idleTimeout = 5 * time.Minute

func (ss *session) reply(format string, args ...any) {
	fmt.Fprintf(ss.bw, format+"\r\n", args...)
}

func (ss *session) reset() {
	ss.from = nil
	ss.rcpts = nil
	ss.eightBit = false
	ss.utf8 = false
}

func (ss *session) run() {
	ss.br = bufio.NewReaderSize(ss.conn, 64<<10)
	ss.bw = bufio.NewWriterSize(ss.conn, 4<<10)
	ss.reply("220 %s ESMTP moat-sink", ss.s.hostname)
	for {
		// Flush only when the client has nothing more buffered
		// (PIPELINING: answer a whole batch in one write).
		if ss.br.Buffered() == 0 {
			if err := ss.bw.Flush(); err != nil {
				return
			}
		}
		ss.conn.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := ss.br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				ss.reply("500 5.5.6 line too long")
				ss.bw.Flush()
			}
			return
		}
		cmdline := strings.TrimRight(string(line), "\r\n")
		verb, arg, _ := strings.Cut(cmdline, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			ss.reset()
			ss.greeted = true
			caps := []string{ss.s.hostname, "PIPELINING", fmt.Sprintf("SIZE %d", ss.s.cfg.MaxSize), "8BITMIME"}
			if !ss.s.cfg.NoSMTPUTF8 {
				caps = append(caps, "SMTPUTF8")
			}
			if ss.s.cfg.TLS != nil && ss.tls == "" {
				caps = append(caps, "STARTTLS")
			}
			if ss.s.cfg.XClient {
				caps = append(caps, "XCLIENT NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT",
					"XFORWARD NAME ADDR PROTO HELO IDENT SOURCE")
			}
			caps = append(caps, "ENHANCEDSTATUSCODES")
			for i, c := range caps {
				sep := "-"
				if i == len(caps)-1 {
					sep = " "
				}
				ss.reply("250%s%s", sep, c)
			}
		case "HELO":
			ss.reset()
			ss.greeted = true
			ss.reply("250 %s", ss.s.hostname)
		case "STARTTLS":
			if ss.s.cfg.TLS == nil || ss.tls != "" {
				ss.reply("502 5.5.1 STARTTLS not available")
				continue
			}
			if ss.br.Buffered() > 0 {
				// Plaintext pipelined after STARTTLS: command injection.
				ss.reply("554 5.5.0 pipelining after STARTTLS")
				ss.bw.Flush()
				return
			}
			ss.reply("220 2.0.0 ready to start TLS")
			ss.bw.Flush()
			tc := tls.Server(ss.conn, ss.s.cfg.TLS)
			tc.SetDeadline(time.Now().Add(time.Minute))
			if err := tc.Handshake(); err != nil {
				ss.s.log.Debug("sink: TLS handshake failed", "err", err)
				return
			}
			tc.SetDeadline(time.Time{})
			ss.conn = tc
			ss.tls = tls.VersionName(tc.ConnectionState().Version)
			ss.br = bufio.NewReaderSize(tc, 64<<10)
			ss.bw = bufio.NewWriterSize(tc, 4<<10)
			ss.greeted = false
			ss.reset()
		case "XCLIENT":
			if !ss.s.cfg.XClient {
				ss.reply("502 5.5.1 XCLIENT not available")
				continue
			}
			if ss.from != nil {
				ss.reply("503 5.5.1 mail transaction in progress")
				continue
			}
			attrs, err := parseAttrs(arg)
			if err != nil {
				ss.reply("501 5.5.4 %s", err)
				continue
			}
			ss.xclient = attrs
			ss.greeted = false
			ss.reset()
			ss.reply("220 %s ESMTP moat-sink", ss.s.hostname)
		case "XFORWARD":
			if !ss.s.cfg.XClient {
				ss.reply("502 5.5.1 XFORWARD not available")
				continue
			}
			attrs, err := parseAttrs(arg)
			if err != nil {
				ss.reply("501 5.5.4 %s", err)
				continue
			}
			if ss.xforward == nil {
				ss.xforward = map[string]string{}
			}
			for k, v := range attrs {
				ss.xforward[k] = v
			}
			ss.reply("250 2.0.0 Ok")
		case "MAIL":
			ss.mail(arg)
		case "RCPT":
			ss.rcpt(arg)
		case "DATA":
			if !ss.data() {
				return
			}
		case "RSET":
			ss.reset()
			ss.xforward = nil
			ss.reply("250 2.0.0 Ok")
		case "NOOP":
			ss.reply("250 2.0.0 Ok")
		case "VRFY":
			ss.reply("252 2.5.2 cannot verify")
		case "QUIT":
			ss.reply("221 2.0.0 Bye")
			ss.bw.Flush()
			return
		default:
			ss.reply("500 5.5.2 command not recognized")
		}
	}
}

func (ss *session) mail(arg string) {
	if !ss.greeted {
		ss.reply("503 5.5.1 send EHLO first")
		return
	}
	if ss.from != nil {
		ss.reply("503 5.5.1 nested MAIL command")
		return
	}
	if !strings.HasPrefix(strings.ToUpper(arg), "FROM:") {
		ss.reply("501 5.5.4 syntax: MAIL FROM:<address>")
		return
	}
	addr, params, err := parsePath(strings.TrimLeft(arg[5:], " "))
	if err != nil {
		ss.reply("501 5.1.7 bad sender address syntax")
		return
	}
	var eight, utf8 bool
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToUpper(k) {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				ss.reply("501 5.5.4 bad SIZE")
				return
			}
			if n > ss.s.cfg.MaxSize {
				ss.reply("552 5.3.4 message too big")
				return
			}
		case "BODY":
			eight = strings.EqualFold(v, "8BITMIME")
		case "SMTPUTF8":
			if ss.s.cfg.NoSMTPUTF8 {
				ss.reply("555 5.5.4 SMTPUTF8 not supported")
				return
			}
			utf8 = true
		}
	}
	if ss.s.cfg.TempFail {
		ss.reply("451 4.3.0 sink: temporary failure (tempfail mode)")
		return
	}
	ss.from = &addr
	ss.eightBit, ss.utf8 = eight, utf8
	ss.reply("250 2.1.0 Ok")
}

func (ss *session) rcpt(arg string) {
	if ss.from == nil {
		ss.reply("503 5.5.1 need MAIL first")
		return
	}
	if !strings.HasPrefix(strings.ToUpper(arg), "TO:") {
		ss.reply("501 5.5.4 syntax: RCPT TO:<address>")
		return
	}
	addr, _, err := parsePath(strings.TrimLeft(arg[3:], " "))
	if err != nil || addr == "" {
		ss.reply("501 5.1.3 bad recipient address syntax")
		return
	}
	if ss.s.reject != nil && ss.s.reject.MatchString(addr) {
		ss.reply("550 5.1.1 <%s>: no such user", addr)
		return
	}
	if len(ss.rcpts) >= 1000 {
		ss.reply("452 4.5.3 too many recipients")
		return
	}
	ss.rcpts = append(ss.rcpts, addr)
	ss.reply("250 2.1.5 Ok")
}

// data reads the message; false means the connection must end.
func (ss *session) data() bool {
	if ss.from == nil || len(ss.rcpts) == 0 {
		ss.reply("503 5.5.1 need RCPT first")
		return true
	}
	ss.reply("354 End data with <CR><LF>.<CR><LF>")
	if err := ss.bw.Flush(); err != nil {
		return false
	}
	ss.conn.SetReadDeadline(time.Now().Add(10 * time.Minute))
	id := ss.s.newID()

	var f *os.File
	var w *bufio.Writer
	var tmp string
	if !ss.s.cfg.NoStore {
		tmp = filepath.Join(ss.s.cfg.Maildir, "tmp", id)
		var err error
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			ss.s.log.Error("sink: create", "err", err)
		} else {
			w = bufio.NewWriterSize(f, 64<<10)
			ss.writeEnvelope(w, id)
		}
	}
	var dst io.Writer // nil interface: discard
	if w != nil {
		dst = w
	}
	size, tooBig, err := copyData(dst, ss.br, ss.s.cfg.MaxSize)
	if err != nil {
		if f != nil {
			f.Close()
			os.Remove(tmp)
		}
		return false
	}
	d := Delivery{ID: id, From: *ss.from, Rcpts: ss.rcpts, Size: size, Remote: ss.conn.RemoteAddr().String(),
		TLS: ss.tls != "", XClient: ss.xclient, XForward: ss.xforward, EightBit: ss.eightBit, SMTPUTF8: ss.utf8}
	ss.reset()
	if tooBig {
		if f != nil {
			f.Close()
			os.Remove(tmp)
		}
		ss.reply("552 5.3.4 message too big")
		return true
	}
	if !ss.s.cfg.NoStore {
		if f == nil {
			ss.reply("451 4.3.0 local error")
			return true
		}
		err := w.Flush()
		if err == nil && ss.s.cfg.Fsync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		d.Path = filepath.Join(ss.s.cfg.Maildir, "new", id)
		if err == nil {
			err = os.Rename(tmp, d.Path)
		}
		if err != nil {
			os.Remove(tmp)
			ss.s.log.Error("sink: store", "err", err)
			ss.reply("451 4.3.0 local error")
			return true
		}
	}
	ss.s.count.Add(1)
	ss.s.mu.Lock()
	if d.Path != "" {
		ss.s.paths = append(ss.s.paths, d.Path)
	}
	ss.s.dels = append(ss.s.dels, d)
	ss.s.cond.Broadcast()
	ss.s.mu.Unlock()
	if ss.s.cfg.OnMessage != nil {
		ss.s.cfg.OnMessage(d)
	}
	ss.reply("250 2.0.0 Ok: queued as %s", id)
	return true
}

func (ss *session) writeEnvelope(w *bufio.Writer, id string) {
	fmt.Fprintf(w, "Return-Path: <%s>\r\n", *ss.from)
	for _, r := range ss.rcpts {
		fmt.Fprintf(w, "X-Sink-Rcpt: <%s>\r\n", r)
	}
	for _, r := range ss.rcpts {
		fmt.Fprintf(w, "Delivered-To: %s\r\n", r)
	}
	if ss.xclient != nil {
		fmt.Fprintf(w, "X-Sink-XClient: %s\r\n", formatAttrs(ss.xclient))
	}
	if ss.xforward != nil {
		fmt.Fprintf(w, "X-Sink-XForward: %s\r\n", formatAttrs(ss.xforward))
	}
	if ss.tls != "" {
		fmt.Fprintf(w, "X-Sink-TLS: %s\r\n", ss.tls)
	}
	fmt.Fprintf(w, "X-Sink-Id: %s\r\n", id)
}

// newID returns a unique Maildir file name.
func (s *Server) newID() string {
	n := s.seq.Add(1)
	now := time.Now()
	return fmt.Sprintf("%d.M%dP%sQ%d.%s", now.Unix(), now.Nanosecond()/1000, s.pid, n, s.hostname)
}

// copyData copies a dot-terminated DATA section from r to w (nil: discard),
// removing dot-stuffing and leaving every other byte as is. It stops
// writing, but keeps reading, past max bytes.
func copyData(w io.Writer, r *bufio.Reader, max int64) (n int64, tooBig bool, err error) {
	bol := true // at beginning of a line
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return n, tooBig, err
		}
		full := err == nil
		if bol {
			if full && (bytes.Equal(chunk, []byte(".\r\n")) || bytes.Equal(chunk, []byte(".\n"))) {
				return n, tooBig, nil
			}
			if len(chunk) > 0 && chunk[0] == '.' {
				chunk = chunk[1:]
			}
		}
		bol = full
		n += int64(len(chunk))
		if n > max {
			tooBig = true
		}
		if w != nil && !tooBig {
			if _, err := w.Write(chunk); err != nil {
				w = nil // keep reading; the store error shows at flush
			}
		}
	}
}

// parsePath parses "<addr> PARAM=V ..." into the address and parameters.
func parsePath(s string) (string, []string, error) {
	if !strings.HasPrefix(s, "<") {
		return "", nil, errors.New("missing <")
	}
	end := strings.IndexByte(s, '>')
	if end < 0 {
		return "", nil, errors.New("missing >")
	}
	addr := s[1:end]
	if i := strings.IndexByte(addr, ':'); i >= 0 && strings.HasPrefix(addr, "@") {
		addr = addr[i+1:] // source route
	}
	return addr, strings.Fields(s[end+1:]), nil
}

// parseAttrs parses XCLIENT/XFORWARD "NAME=xtext ..." attributes.
func parseAttrs(s string) (map[string]string, error) {
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("bad attribute %q", f)
		}
		dv, err := xtextDecode(v)
		if err != nil {
			return nil, err
		}
		m[strings.ToUpper(k)] = dv
	}
	if len(m) == 0 {
		return nil, errors.New("no attributes")
	}
	return m, nil
}

func formatAttrs(m map[string]string) string {
	var b strings.Builder
	for _, k := range []string{"ADDR", "PORT", "NAME", "HELO", "PROTO", "LOGIN", "IDENT", "SOURCE", "DESTADDR", "DESTPORT"} {
		if v, ok := m[k]; ok {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(k + "=" + strconv.Quote(v))
		}
	}
	return b.String()
}

// xtextDecode decodes RFC 3461 xtext ("+HH" escapes).
func xtextDecode(s string) (string, error) {
	if !strings.Contains(s, "+") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("bad xtext")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", errors.New("bad xtext")
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// Envelope is the block of fields the sink put in front of a stored message.
type Envelope struct {
	ID       string
	From     string
	Rcpts    []string
	XClient  string // raw X-Sink-XClient value, "" if none
	XForward string // raw X-Sink-XForward value, "" if none
	TLS      string // TLS version name, "" if none
}

// Split separates a stored file into the sink's envelope block and the
// message exactly as it was received.
func Split(raw []byte) (Envelope, []byte, error) {
	var env Envelope
	rest := raw
	for {
		i := bytes.Index(rest, []byte("\r\n"))
		if i < 0 {
			return env, nil, errors.New("sink: no X-Sink-Id field: not a sink file")
		}
		line := string(rest[:i])
		rest = rest[i+2:]
		name, val, _ := strings.Cut(line, ": ")
		switch name {
		case "Return-Path":
			env.From = strings.TrimSuffix(strings.TrimPrefix(val, "<"), ">")
		case "X-Sink-Rcpt":
			env.Rcpts = append(env.Rcpts, strings.TrimSuffix(strings.TrimPrefix(val, "<"), ">"))
		case "Delivered-To":
		case "X-Sink-XClient":
			env.XClient = val
		case "X-Sink-XForward":
			env.XForward = val
		case "X-Sink-TLS":
			env.TLS = val
		case "X-Sink-Id":
			env.ID = val
			return env, rest, nil
		default:
			return env, nil, fmt.Errorf("sink: unexpected field %q in envelope block", name)
		}
	}
}

// ReadFile reads a stored message and splits it (see Split).
func ReadFile(path string) (Envelope, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Envelope{}, nil, err
	}
	return Split(raw)
}
