package smtpd

import (
	"moat.dev/moat/internal/verdict"
	"strings"
	"testing"
	"time"
)

// The response to HELO names the server and carries no enhanced code
// (RFC 5321 4.1.1.1, RFC 2034 4); a client's HELO/EHLO name is echoed as
// printable ASCII only (RFC 5321 4.2).
func TestHeloReplies(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial()
	c.reply()
	c.expect("HELO client.test", "250 mx.moat.test Hello client.test")
	if got := c.cmd("HELO bad\xff\xfe(name)"); got != "250 mx.moat.test Hello bad??(name)" {
		t.Fatalf("HELO with 8-bit name: %q", got)
	}
	c.send("EHLO caf\xc3\xa9.test\r\n")
	lines := c.replyLines()
	if lines[0] != "250-mx.moat.test Hello caf??.test" {
		t.Fatalf("EHLO first line %q", lines[0])
	}
	c.expect("EHLO", "501 5.5.4 Syntax: EHLO hostname")
	c.expect("HELO ", "501 5.5.4 Syntax: HELO hostname")
	c.expect("MAIL FROM:<a@sender.test>", "250 ")
}

// SIZE= with more digits than uint64 holds (still 1*20DIGIT, RFC 1870) is
// too big, not a syntax error.
func TestSizeOverflow(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial().start()
	c.expect("MAIL FROM:<a@sender.test> SIZE=99999999999999999999", "552 5.3.4")
	c.expect("MAIL FROM:<a@sender.test> SIZE=999999999999999999999", "501 5.5.4")
	c.expect("MAIL FROM:<a@sender.test> SIZE=-1", "501 5.5.4")
	c.expect("MAIL FROM:<a@sender.test> SIZE=100", "250 ")
}

// 8-bit content sent without BODY=8BITMIME is recorded as 8-bit, so the
// relay declares it to the backend (RFC 6152); 7-bit mail stays 7-bit.
func TestUndeclared8BitContent(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial().start()
	for _, body := range []string{
		"plain ascii\r\n",
		"caf\xc3\xa9 in the middle\r\n",
		"\xc3\xa9 at the start of a line\r\n",
	} {
		c.expect("MAIL FROM:<a@sender.test>", "250 ")
		c.expect("RCPT TO:<b@customer.example>", "250 ")
		c.expect("DATA", "354 ")
		c.expect(msg("t", body)+".", "250 2.0.0 Ok: queued as ")
	}
	ids := e.spool.ids()
	if len(ids) != 3 {
		t.Fatalf("committed %d", len(ids))
	}
	for i, want := range []bool{false, true, true} {
		raw, env := e.spool.message(t, ids[i])
		if env.EightBit != want {
			t.Errorf("message %d (%q): EightBit %v, want %v", i, strings.SplitN(string(raw), "\r\n\r\n", 2)[1], env.EightBit, want)
		}
	}
}

// A message carrying more Received fields than max_hops is a mail loop
// (RFC 5321 6.3): 554 5.4.6, nothing spooled; at the limit it passes.
func TestHopLimit(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial().start()
	for _, n := range []int{50, 51} {
		c.expect("MAIL FROM:<a@sender.test>", "250 ")
		c.expect("RCPT TO:<b@customer.example>", "250 ")
		c.expect("DATA", "354 ")
		body := msg("loop", "hello\r\n")
		want := "250 2.0.0 Ok: queued as "
		if n > 50 {
			want = "554 5.4.6 "
		}
		c.expect(strings.Repeat("Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n", n)+body+".", want)
	}
	if ids := e.spool.ids(); len(ids) != 1 {
		t.Fatalf("spooled %d messages, want only the one within the limit", len(ids))
	}
}

// The line-length limit does not count the dot doubled for transparency
// (RFC 5321 4.5.3.1.6): a 1000-octet line starting with "." is sent as
// 1001 octets and is within the limit; one octet more is not.
func TestDotStuffedLineLength(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial().start()
	for _, tc := range []struct {
		xs   int
		want string
	}{{998, "250 2.0.0 Ok: queued as "}, {999, "554 5.6.0"}} {
		c.expect("MAIL FROM:<a@sender.test>", "250 ")
		c.expect("RCPT TO:<b@customer.example>", "250 ")
		c.expect("DATA", "354 ")
		// On the wire: ".." then the x's: the line is "." plus the x's.
		c.expect(msg("dots", ".."+strings.Repeat("x", tc.xs-1)+"\r\n")+".", tc.want)
	}
}

// A transaction whose every recipient was refused is logged with the
// refusal as its reply (not the 221 of a QUIT that followed) and the
// refused addresses, so that tracking finds it as rejected.
func TestRefusedRecipientsLogged(t *testing.T) {
	e := newEnv(t, nil)
	e.rec.mu.Lock()
	e.rec.rcptHard["nobody@customer.example"] = &verdict.Verdict{Action: verdict.Reject,
		Reply: verdict.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "No such user"}}
	e.rec.mu.Unlock()
	c := e.dial().start()
	c.expect("MAIL FROM:<a@sender.test>", "250 ")
	c.expect("RCPT TO:<nobody@customer.example>", "550 5.1.1")
	c.expect("RCPT TO:<x@elsewhere.test>", "550 5.7.1")
	c.expect("QUIT", "221 ")
	var line string
	for range 100 {
		for l := range strings.SplitSeq(e.logs.String(), "\n") {
			if strings.Contains(l, `msg="smtp transaction"`) {
				line = l
			}
		}
		if line != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{`reply="550 5.7.1 Relaying denied"`, "refused_rcpts=2", "nobody@customer.example: 550 5.1.1 No such user", "x@elsewhere.test: 550 5.7.1"} {
		if !strings.Contains(line, want) {
			t.Errorf("transaction line lacks %q:\n%s", want, line)
		}
	}
}
