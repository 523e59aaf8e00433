package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/sink"
)

// The hostile-client battery: raw sockets against a running `moat serve`
// on its production defaults, except short timeouts (so the timeout cases
// end quickly) and a small message size limit (so the SIZE boundary is
// cheap to reach).

const hostileMaxSize = 1 << 20

// smtpSettings adds keys to the smtp section the harness wrote (to the
// dns section when keys starts with "dns:").
func smtpSettings(t *testing.T, g *gateway, keys string) {
	t.Helper()
	b, err := os.ReadFile(g.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("smtp:\n  listen: [%q]\n", g.SMTP)
	if strings.HasPrefix(keys, "dns:") {
		listen = fmt.Sprintf("dns:\n  resolvers: [%q]\n", g.DNS.Addr)
		keys = strings.TrimPrefix(keys, "dns:")
	}
	if !strings.Contains(string(b), listen) {
		t.Fatalf("harness config changed: no %q", listen)
	}
	cfg := strings.Replace(string(b), listen, listen+keys, 1)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// enhanced matches a reply line carrying an RFC 3463 enhanced status code
// whose class is the reply's (2 for the intermediate 354: RFC 3463 has no
// class 3).
var enhanced = regexp.MustCompile(`^([2345])\d\d[ -]([245])\.\d{1,3}\.\d{1,3}( |$)`)

// rawClient speaks SMTP over a bare socket and checks every reply line.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialHostile(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	if lines, err := r.read(true); err != nil || !strings.HasPrefix(lines[0], "220 ") {
		t.Fatalf("greeting %q %v", lines, err)
	}
	return r
}

func (r *rawClient) send(s string) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("writing %q: %v", trunc(s), err)
	}
}

// read reads one (multi-line) reply. exempt skips the enhanced-code check
// where RFC 2034 does not ask for one: the greeting and HELO/EHLO replies.
func (r *rawClient) read(exempt bool) ([]string, error) {
	r.t.Helper()
	var lines []string
	for {
		r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		l, err := r.br.ReadString('\n')
		if err != nil {
			return lines, err
		}
		if !strings.HasSuffix(l, "\r\n") {
			r.t.Errorf("reply line without CRLF: %q", l)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 {
			r.t.Fatalf("malformed reply line %q", l)
		}
		if !exempt {
			if m := enhanced.FindStringSubmatch(l); m == nil || strings.Replace(m[1], "3", "2", 1) != m[2] {
				r.t.Errorf("reply line without a matching enhanced status code: %q", l)
			}
		}
		if l[3] == ' ' {
			return lines, nil
		}
	}
}

// cmd sends a line (CRLF added) and returns the final reply line.
func (r *rawClient) cmd(line string) string {
	r.t.Helper()
	r.send(line + "\r\n")
	v := strings.ToUpper(line)
	lines, err := r.read(strings.HasPrefix(v, "EHLO") || strings.HasPrefix(v, "HELO"))
	if err != nil {
		r.t.Fatalf("%q: no reply: %v (got %q)", trunc(line), err, lines)
	}
	return lines[len(lines)-1]
}

func (r *rawClient) expect(line, want string) []string {
	r.t.Helper()
	r.send(line + "\r\n")
	v := strings.ToUpper(line)
	lines, err := r.read(strings.HasPrefix(v, "EHLO") || strings.HasPrefix(v, "HELO"))
	if err != nil {
		r.t.Fatalf("%q: no reply: %v (got %q)", trunc(line), err, lines)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, want) {
		r.t.Fatalf("%q: got %q, want %q", trunc(line), got, want)
	}
	return lines
}

// expectReplies reads n replies (after pipelined commands) and compares
// their prefixes.
func (r *rawClient) expectReplies(want ...string) {
	r.t.Helper()
	for i, w := range want {
		lines, err := r.read(false)
		if err != nil {
			r.t.Fatalf("reply %d: %v", i, err)
		}
		if got := lines[len(lines)-1]; !strings.HasPrefix(got, w) {
			r.t.Fatalf("reply %d: got %q, want %q", i, got, w)
		}
	}
}

// expectClosed reads until the server closes; every reply on the way must
// be well formed, and the last one must start with last ("" for none).
func (r *rawClient) expectClosed(last string) {
	r.t.Helper()
	var final string
	for {
		lines, err := r.read(false)
		if len(lines) > 0 {
			final = lines[len(lines)-1]
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.t.Fatalf("server did not close the connection (last reply %q)", final)
			}
			break
		}
	}
	if last != "" && !strings.HasPrefix(final, last) {
		r.t.Fatalf("last reply before close %q, want %q", final, last)
	}
	if last == "" && final != "" {
		r.t.Fatalf("unexpected reply before close: %q", final)
	}
}

func (r *rawClient) startTLS() {
	r.t.Helper()
	tc := tls.Client(r.c, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		r.t.Fatal(err)
	}
	r.c = tc
	r.br = bufio.NewReader(tc)
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

const ehlo = "EHLO client.sender.test"

// sized returns a message of exactly n octets as go-smtp counts them (the
// data without the end-of-data line, dot-unstuffed: no line starts with a
// dot here).
func sized(n int) string {
	head := "From: a@sender.test\r\nSubject: size\r\n\r\n"
	var b strings.Builder
	b.WriteString(head)
	for b.Len()+80 <= n {
		b.WriteString(strings.Repeat("s", 78) + "\r\n")
	}
	if rest := n - b.Len(); rest > 0 {
		if rest >= 3 {
			b.WriteString(strings.Repeat("t", rest-2) + "\r\n")
		} else {
			// Make room: shorten the last filler line.
			s := b.String()
			s = s[:len(s)-80] + strings.Repeat("s", 78-(3-rest)) + "\r\n" + "u\r\n"
			b.Reset()
			b.WriteString(s)
		}
	}
	if b.Len() != n {
		panic(fmt.Sprintf("sized(%d) = %d", n, b.Len()))
	}
	return b.String()
}

func TestHostileClients(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "queue:\n  min_backoff: 1s\ndomains:\n"+domainYAML("example.test", backend.Addr(), ""))
	smtpSettings(t, g, fmt.Sprintf("  command_timeout: 2s\n  data_timeout: 3s\n  max_message_size: %d\n", hostileMaxSize))
	g.Start()
	queued := 0 // messages that got "250 ... queued as"

	// transaction opens a session with EHLO, MAIL and RCPT done.
	transaction := func(t *testing.T) *rawClient {
		r := dialHostile(t, g.SMTP)
		r.expect(ehlo, "250")
		r.expect("MAIL FROM:<a@sender.test>", "250 2.")
		r.expect("RCPT TO:<alice@example.test>", "250 2.")
		return r
	}
	long64 := strings.Repeat("l", 64)
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"RCPT before MAIL, DATA before RCPT", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("RCPT TO:<alice@example.test>", "503 5.5.1")
			r.expect("DATA", "503 5.5.1")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("DATA", "503 5.5.1")
		}},
		{"MAIL before HELO", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect("MAIL FROM:<a@sender.test>", "503 5.5.1")
		}},
		{"MAIL twice", func(t *testing.T) {
			r := transaction(t)
			r.expect("MAIL FROM:<b@sender.test>", "503 5.5.1")
			r.expect("RSET", "250 2.")
			r.expect("MAIL FROM:<b@sender.test>", "250 2.")
		}},
		{"unknown MAIL and RCPT parameters", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("MAIL FROM:<a@sender.test> FOO=BAR", "555 5.5.4")
			r.expect("MAIL FROM:<a@sender.test> RET=FULL", "555 5.5.4") // DSN is not offered
			r.expect("MAIL FROM:<a@sender.test> BODY=BINARYMIME", "501 5.5.4")
			r.expect("MAIL FROM:<a@sender.test> SIZE=abc", "501 5.5.4")
			r.expect("MAIL FROM:<a@sender.test> BODY=8BITMIME SIZE=100", "250 2.")
			r.expect("RCPT TO:<alice@example.test> NOTIFY=NEVER", "555 5.5.4")
			r.expect("RCPT TO:<alice@example.test> XYZ", "555 5.5.4")
			r.expect("RCPT TO:<alice@example.test>", "250 2.")
		}},
		{"malformed addresses", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			for _, a := range []string{"<a@@sender.test>", "a@sender.test", "<a@sender.test", "<a b@sender.test>", "<a@-x.test>", "<a@sender..test>"} {
				r.expect("MAIL FROM:"+a, "501 5.1.7")
			}
			// A fresh session: max_errors (10) would end this one.
			r = dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			for _, a := range []string{"<>", "<alice@>", "alice@example.test", "<alice@example.test", "<\"unterminated@example.test>", "<alice@exa_mple..test>"} {
				r.expect("RCPT TO:"+a, "501 5.1.3")
			}
		}},
		{"length limits", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			label := strings.Repeat("d", 60) + "."
			r.expect("MAIL FROM:<l"+long64+long64+"@sender.test>", "250 2.") // a long VERP sender is mail
			r.expect("RSET", "250 2.")
			r.expect("MAIL FROM:<a@"+strings.Repeat(label, 4)+"xsender.test>", "501 5.1.7") // domain 256
			// Path 257 octets with both parts within their limits.
			r.expect("MAIL FROM:<"+long64+"@"+strings.Repeat(label, 3)+strings.Repeat("e", 190-183-5)+".test>", "501 5.1.7")
			r.expect("MAIL FROM:<"+long64+"@sender.test>", "250 2.") // 64 is fine
			r.expect("RCPT TO:<l"+long64+"@example.test>", "501 5.1.3")
			r.expect("RCPT TO:<"+long64+"@example.test>", "250 2.")
			r.expect("NOOP "+strings.Repeat("n", 600), "500 5.5.2") // command line over 512
		}},
		{"8-bit and UTF-8 envelope without SMTPUTF8", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("MAIL FROM:<jörg@sender.test>", "553 5.6.7")
			r.expect("MAIL FROM:<j\xf6rg@sender.test>", "501 5.1.7") // Latin-1, not UTF-8
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("RCPT TO:<müller@example.test>", "553 5.6.7")
			r.expect("RCPT TO:<m\xfcller@example.test>", "501 5.1.3")
			r.expect("RSET", "250 2.")
			r.expect("MAIL FROM:<jörg@sender.test> SMTPUTF8", "250 2.")
			r.expect("RCPT TO:<müller@example.test>", "250 2.")
		}},
		{"NUL and C0 in commands", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect("EHLO client\x01.test", "500 5.5.2")
			r.expect("NOOP\x00", "500 5.5.2")
			r.expect("NOOP \x1b[31m", "500 5.5.2")
			r.expect(ehlo, "250")
			r.expect("MAIL FROM:<a\x00b@sender.test>", "501 5.1.7")
			r.expect("MAIL FROM:<a@sender.test>\x00", "501 5.1.7")
			r.expect("MAIL FROM:<a@sender.test> \x07", "501 5.5.4")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("RCPT TO:<al\x7fice@example.test>", "501 5.1.3")
		}},
		{"VRFY, EXPN and HELP do not enumerate", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			a, b := r.cmd("VRFY alice"), r.cmd("VRFY nosuchuser")
			if !strings.HasPrefix(a, "252 2.") && !strings.HasPrefix(a, "502 5.") {
				t.Fatalf("VRFY: %q", a)
			}
			if a != strings.Replace(b, "nosuchuser", "alice", -1) {
				t.Fatalf("VRFY tells users apart: %q vs %q", a, b)
			}
			r.expect("VRFY", "501 5.5.4")
			if got := r.cmd("EXPN staff"); !strings.HasPrefix(got, "252 2.") && !strings.HasPrefix(got, "502 5.") {
				t.Fatalf("EXPN: %q", got)
			}
			r.expect("HELP", "214 2.0.0")
		}},
		{"empty or missing HELO argument", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect("HELO", "501 5.5.")
			r.expect("EHLO", "501 5.5.")
			r.expect("EHLO   ", "501 5.5.")
			r.expect("MAIL FROM:<a@sender.test>", "503 5.5.1")
			r.expect("HELO client.sender.test", "250")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
		}},
		{"HELO and EHLO mid-transaction reset the state", func(t *testing.T) {
			r := transaction(t)
			r.expect("EHLO again.sender.test", "250")
			r.expect("DATA", "503 5.5.1")
			r.expect("RCPT TO:<alice@example.test>", "503 5.5.1")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("RCPT TO:<alice@example.test>", "250 2.")
			r.expect("HELO again.sender.test", "250")
			r.expect("DATA", "503 5.5.1")
		}},
		{"RSET, NOOP, QUIT", func(t *testing.T) {
			r := transaction(t)
			r.expect("RSET", "250 2.")
			r.expect("DATA", "503 5.5.1")
			r.expect("NOOP", "250 2.")
			r.expect("NOOP hello", "250 2.")
			r.expect("QUIT", "221 2.")
			r.expectClosed("")
		}},
		{"NOOP flood", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.send(strings.Repeat("NOOP\r\n", 150))
			ok := 0
			for {
				lines, err := r.read(false)
				if err != nil {
					t.Fatalf("connection ended without 421 after %d NOOPs: %v", ok, err)
				}
				last := lines[len(lines)-1]
				if strings.HasPrefix(last, "250 ") {
					ok++
					continue
				}
				if !strings.HasPrefix(last, "421 4.7.0") {
					t.Fatalf("after %d NOOPs: %q", ok, last)
				}
				break
			}
			if ok >= 150 || ok < 50 {
				t.Fatalf("%d NOOPs answered before the cut", ok)
			}
			r.expectClosed("")
		}},
		{"junk flood", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.send(strings.Repeat("GET / HTTP/1.0\r\n", 30))
			n := 0
			for {
				lines, err := r.read(false)
				if err != nil {
					t.Fatalf("connection ended without 421 after %d junk lines: %v", n, err)
				}
				last := lines[len(lines)-1]
				if strings.HasPrefix(last, "421 4.7.0") {
					break
				}
				if !strings.HasPrefix(last, "500 5.5.") {
					t.Fatalf("junk line: %q", last)
				}
				n++
			}
			if n >= 30 {
				t.Fatalf("%d junk lines answered", n)
			}
			r.expectClosed("")
		}},
		{"AUTH on port 25 without TLS", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			for _, l := range r.expect(ehlo, "250") {
				if strings.Contains(strings.ToUpper(l), "AUTH") {
					t.Fatalf("AUTH advertised: %q", l)
				}
			}
			r.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "502 5.5.1")
			r.expect("AUTH LOGIN", "502 5.5.1")
			r.expect("MAIL FROM:<a@sender.test> AUTH=alice@example.test", "555 5.5.4")
		}},
		{"STARTTLS twice", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("STARTTLS", "220 2.")
			r.startTLS()
			for _, l := range r.expect(ehlo, "250") {
				if strings.Contains(l, "STARTTLS") {
					t.Fatalf("STARTTLS advertised under TLS: %q", l)
				}
			}
			r.expect("STARTTLS", "503 5.5.1")
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
		}},
		{"STARTTLS with pipelined junk", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.send("STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
			r.expectReplies("220 2.")
			r.startTLS()
			// The injected commands are gone and the session starts over.
			r.expect("MAIL FROM:<a@sender.test>", "503 5.5.1")
			r.expect(ehlo, "250")
			r.expect("RCPT TO:<alice@example.test>", "503 5.5.1")
		}},
		{"BDAT without CHUNKING", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			for _, l := range r.expect(ehlo, "250") {
				if strings.Contains(l, "CHUNKING") {
					t.Fatalf("CHUNKING advertised; test BDAT then: %q", l)
				}
			}
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("RCPT TO:<alice@example.test>", "250 2.")
			r.expect("BDAT 3 LAST", "502 5.5.1")
		}},
		{"silent client is timed out", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expectClosed("421 4.4.2")
		}},
		{"TLS handshake that never completes", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect("STARTTLS", "220 2.")
			r.send("\x16\x03\x01") // the first bytes of a ClientHello, then nothing
			r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err := io.Copy(io.Discard, r.br) // nil at EOF
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server kept the stalled handshake open: %v", err)
			}
		}},
		{"half-closed mid-DATA", func(t *testing.T) {
			r := transaction(t)
			r.expect("DATA", "354 ")
			r.send("Subject: half\r\n\r\nsome text\r\n")
			r.c.(*net.TCPConn).CloseWrite()
			for {
				lines, err := r.read(false)
				if err != nil {
					break
				}
				if l := lines[len(lines)-1]; l[0] == '2' {
					t.Fatalf("a half-closed DATA was answered %q", l)
				}
			}
		}},
		{"DATA without the final dot, then disconnect", func(t *testing.T) {
			r := transaction(t)
			r.expect("DATA", "354 ")
			r.send("Subject: cut\r\n\r\nline one\r\nline two\r\n")
			r.c.Close()
		}},
		{"huge header section", func(t *testing.T) {
			r := transaction(t)
			r.expect("MAIL FROM:<a@sender.test>", "503 5.5.1") // still in the transaction
			r.expect("DATA", "354 ")
			var b strings.Builder
			for b.Len() < 300<<10 {
				b.WriteString("X-Filler: " + strings.Repeat("h", 900) + "\r\n")
			}
			r.send(b.String() + "\r\nbody\r\n.\r\n")
			if l, _ := r.read(false); len(l) == 0 || !strings.HasPrefix(l[0], "552 5.3.4") || !strings.Contains(l[0], "header") {
				t.Fatalf("huge header section: %q", l)
			}
			r.expect("NOOP", "250 2.")
		}},
		{"message with only headers", func(t *testing.T) {
			r := transaction(t)
			r.expect("DATA", "354 ")
			r.expect("From: a@sender.test\r\nTo: alice@example.test\r\nSubject: headers only\r\n.", "250 2.")
			queued++
		}},
		{"exactly SIZE, and one octet over", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.expect(fmt.Sprintf("MAIL FROM:<a@sender.test> SIZE=%d", hostileMaxSize+1), "552 5.3.4")
			r.expect(fmt.Sprintf("MAIL FROM:<a@sender.test> SIZE=%d", hostileMaxSize), "250 2.")
			r.expect("RCPT TO:<alice@example.test>", "250 2.")
			r.expect("DATA", "354 ")
			r.expect(sized(hostileMaxSize)+".", "250 2.")
			queued++
			r.expect("MAIL FROM:<a@sender.test>", "250 2.")
			r.expect("RCPT TO:<alice@example.test>", "250 2.")
			r.expect("DATA", "354 ")
			r.expect(sized(hostileMaxSize+1)+".", "552 5.3.4")
			r.expect("NOOP", "250 2.")
		}},
		{"dot line with trailing spaces is not the end", func(t *testing.T) {
			r := transaction(t)
			r.expect("DATA", "354 ")
			r.send("Subject: dots\r\n\r\nbefore\r\n. \r\n.\t\r\nafter\r\n")
			r.expect(".", "250 2.")
			queued++
		}},
		{"pipelined with some RCPT refused", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nRCPT TO:<bad address@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
			r.expectReplies("250 2.", "250 2.", "550 5.7.1", "501 5.1.3", "250 2.", "354 ")
			r.expect("Subject: pipelined\r\n\r\nsome refused\r\n.", "250 2.")
			queued++
		}},
		{"pipelined with every RCPT refused", func(t *testing.T) {
			r := dialHostile(t, g.SMTP)
			r.expect(ehlo, "250")
			r.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nRCPT TO:<bad address@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nbody\r\n.\r\nQUIT\r\n")
			r.expectReplies("250 2.", "550 5.7.1", "501 5.1.3", "554 5.5.1")
			// The would-be message lines are answered as (junk) commands;
			// none of them may be taken for mail.
			for {
				lines, err := r.read(false)
				if err != nil {
					t.Fatalf("no 221 after QUIT: %v", err)
				}
				l := lines[len(lines)-1]
				if strings.HasPrefix(l, "221 ") {
					break
				}
				if l[0] == '2' || l[0] == '3' {
					t.Fatalf("message line accepted: %q", l)
				}
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, tc.run)
	}

	// Exactly the messages that got 250 arrive, and nothing else.
	if !backend.Wait(queued, 30*time.Second) {
		t.Fatalf("%d of %d accepted messages delivered", backend.Count(), queued)
	}
	time.Sleep(time.Second) // let anything wrongly queued surface too
	if backend.Count() != queued {
		t.Fatalf("backend got %d messages, %d were accepted", backend.Count(), queued)
	}
	var sawDots bool
	for _, m := range backend.Messages() {
		_, raw, err := sink.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), "Subject: dots") {
			sawDots = true
			// The leading dot of each line is transparency (RFC 5321
			// 4.5.2): ". " and ".\t" arrive as " " and "\t".
			if !strings.HasSuffix(string(raw), "\r\n\r\nbefore\r\n \r\n\t\r\nafter\r\n") {
				t.Fatalf("dot lines mangled:\n%q", raw)
			}
		}
	}
	if !sawDots {
		t.Fatal("the dot-line message did not arrive")
	}
}

// TestHostileConnectionLimitAndShutdown: at max_connections a new client
// gets 421 4.3.2 (not a hang or a reset), and SIGTERM answers idle
// sessions 421 4.3.2 before the process exits.
func TestHostileConnectionLimitAndShutdown(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	smtpSettings(t, g, "  max_connections: 2\n")
	g.Start()
	// Start's probe connection may still be counted for a moment: dial
	// until greeted.
	greeted := func() *rawClient {
		var r *rawClient
		waitFor(t, "a greeting", 10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", g.SMTP, time.Second)
			if err != nil {
				return false
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "220 ") {
				c.Close()
				return false
			}
			t.Cleanup(func() { c.Close() })
			r = &rawClient{t: t, c: c, br: br}
			return true
		})
		return r
	}
	a, b := greeted(), greeted()
	a.expect(ehlo, "250")
	b.expect(ehlo, "250")
	third := &rawClient{t: t}
	c, err := net.DialTimeout("tcp", g.SMTP, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	third.c, third.br = c, bufio.NewReader(c)
	third.expectClosed("421 4.3.2")

	// Both sessions are idle: SIGTERM answers them and the server exits.
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a.expectClosed("421 4.3.2")
	b.expectClosed("421 4.3.2")
	select {
	case <-g.waitDone:
	case <-time.After(30 * time.Second):
		t.Fatal("moat serve did not exit after SIGTERM")
	}
	g.cmd = nil
	if _, err := smtp.Dial(g.SMTP); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

// TestReceivedPTRName: the Received field the backend gets names the
// client by its forward-confirmed reverse DNS name, Postfix style, and
// XCLIENT passes that name on; a PTR that does not resolve back gives
// "unknown" and NAME=[UNAVAILABLE]. The gateway's resolver asks the test
// DNS server, which answers the PTR and A records.
func TestReceivedPTRName(t *testing.T) {
	backend := startSink(t, sink.Config{XClient: true})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.DNS.Add(t, "1.0.0.127.in-addr.arpa. 300 IN PTR client.sender.test.")
	g.DNS.Add(t, "client.sender.test. 300 IN A 127.0.0.1")
	g.DNS.Add(t, "2.0.0.127.in-addr.arpa. 300 IN PTR liar.sender.test.")
	g.DNS.Add(t, "liar.sender.test. 300 IN A 192.0.2.1")
	// Loopback would otherwise be "localhost" without asking the server.
	smtpSettings(t, g, "dns:  local_zones: false\n")
	g.Start()

	sendFrom := func(src, helo, rcpt string, startTLS bool) string {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", g.SMTP)
		if err != nil {
			t.Fatal(err)
		}
		c := smtp.NewClient(nc)
		if startTLS {
			// EHLO, STARTTLS, and EHLO again with helo.
			if c, err = smtp.NewClientStartTLS(nc, &tls.Config{InsecureSkipVerify: true}); err != nil {
				t.Fatal(err)
			}
		}
		defer c.Close()
		if err := c.Hello(helo); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("someone@sender.test", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "From: someone@sender.test\r\nSubject: ptr\r\n\r\nbody\r\n")
		resp, err := w.CloseWithResponse()
		if err != nil {
			t.Fatal(err)
		}
		c.Quit()
		return queueID(resp.StatusText)
	}
	confirmed := sendFrom("127.0.0.1", "client.sender.test", "alice@example.test", true)
	unconfirmed := sendFrom("127.0.0.2", "liar.sender.test", "bob@example.test", false)
	if !backend.Wait(2, 30*time.Second) {
		t.Fatalf("%d of 2 messages delivered", backend.Count())
	}
	got := map[string]struct {
		env sink.Envelope
		raw string
	}{}
	for _, m := range backend.Messages() {
		env, raw, err := sink.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		got[env.Rcpts[0]] = struct {
			env sink.Envelope
			raw string
		}{env, string(raw)}
	}
	received := regexp.MustCompile(`^Received: from (\S+) \((\S+) \[([^]]+)\]\)\r\n(?:\t\(using (TLS 1\.[23] with cipher \S+)\)\r\n)?\tby moat\.test \(Moat\) with (\S+) id (\S+)\r\n\tfor <([^>]+)>; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [-+]\d{4}\r\n`)
	for _, tc := range []struct {
		rcpt, helo, ptr, ip, tls, proto, id, xname string
	}{
		{"alice@example.test", "client.sender.test", "client.sender.test", "127.0.0.1", "TLS 1.3 with cipher ", "ESMTPS", confirmed, `NAME="client.sender.test"`},
		{"bob@example.test", "liar.sender.test", "unknown", "127.0.0.2", "", "ESMTP", unconfirmed, `NAME="[UNAVAILABLE]"`},
	} {
		m, ok := got[tc.rcpt]
		if !ok {
			t.Fatalf("nothing delivered for %s", tc.rcpt)
		}
		f := received.FindStringSubmatch(m.raw)
		if f == nil {
			t.Fatalf("%s: no Postfix-style Received field first:\n%.600s", tc.rcpt, m.raw)
		}
		if !strings.HasPrefix(f[4], tc.tls) || (tc.tls == "") != (f[4] == "") {
			t.Errorf("%s: Received TLS %q, want %q...", tc.rcpt, f[4], tc.tls)
		}
		f = append(f[1:4], f[5:]...)
		if want := []string{tc.helo, tc.ptr, tc.ip, tc.proto, tc.id, tc.rcpt}; strings.Join(f, "|") != strings.Join(want, "|") {
			t.Errorf("%s: Received from %q, want %q", tc.rcpt, f, want)
		}
		if !strings.Contains(m.env.XClient, tc.xname) || !strings.Contains(m.env.XClient, `ADDR="`+tc.ip+`"`) {
			t.Errorf("%s: XCLIENT %q, want %s", tc.rcpt, m.env.XClient, tc.xname)
		}
	}
}
