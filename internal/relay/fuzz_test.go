package relay

import (
	"bufio"
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// FuzzNormalise checks the outbound stream can never carry a bare CR, bare
// LF, NUL or an unstuffed "." line, and that apart from line endings and
// stuffing the content is unchanged.
func FuzzNormalise(f *testing.F) {
	f.Add([]byte("a\r\n.\r\nb"), "")
	f.Add([]byte("Subject: x\n\n.\r.\n\r\r\n"), "[SPAM] ")
	f.Add([]byte("From: a\r\n\r\n"), "[X]")
	f.Fuzz(func(t *testing.T, msg []byte, prefix string) {
		if strings.ContainsAny(prefix, "\r\n\x00") {
			return
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		nw := newNormWriter(bw, true)
		err := copyMessage(nw, bytes.NewReader(msg), prefix, "")
		bw.Flush()
		if bytes.IndexByte(msg, 0) >= 0 || strings.Contains(prefix, "\x00") {
			if err == nil {
				t.Fatal("NUL not refused")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		b := out.Bytes()
		if len(b) > 0 && !bytes.HasSuffix(b, []byte("\r\n")) {
			t.Fatalf("unterminated: %q", b)
		}
		lines := bytes.Split(b, []byte("\r\n"))
		var plain [][]byte
		for _, l := range lines[:len(lines)-1] {
			if bytes.ContainsAny(l, "\r\n") {
				t.Fatalf("bare CR/LF in line %q", l)
			}
			if len(l) > 0 && l[0] == '.' {
				if len(l) < 2 || l[1] != '.' {
					t.Fatalf("unstuffed dot line %q in %q", l, b)
				}
				l = l[1:]
			}
			plain = append(plain, l)
		}
		if prefix == "" {
			// Same content once every line ending style is unified.
			want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(msg))
			got := string(bytes.Join(plain, []byte("\n")))
			if len(plain) > 0 {
				got += "\n"
			}
			if want != "" && !strings.HasSuffix(want, "\n") {
				want += "\n"
			}
			// A message whose first line is neither a field nor empty
			// gets the empty line ending its (empty) header section.
			if first, _, _ := strings.Cut(want, "\n"); first != "" && !fieldLine.MatchString(first) {
				want = "\n" + want
			}
			if got != want {
				t.Fatalf("content changed:\n%q\n%q", got, want)
			}
		}
	})
}

var fieldLine = regexp.MustCompile(`^[!-9;-~]+:`)

func FuzzReadReply(f *testing.F) {
	f.Add("250-a\r\n250 2.0.0 ok\r\n")
	f.Add("550 5.1.1 no\r\n")
	f.Add("220\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfg := DefaultConfig()
		c := &smtpConn{br: bufio.NewReaderSize(strings.NewReader(s), 4096), cfg: &cfg, nc: netConnStub{}}
		r, _, err := c.readReply(0)
		if err == nil {
			if r.Code < 200 || r.Code > 599 || r.Enhanced[0] != r.Code/100 {
				t.Fatalf("reply %+v from %q", r, s)
			}
			if strings.ContainsAny(r.Text, "\r\n\x00") {
				t.Fatalf("control characters in text %q", r.Text)
			}
		}
	})
}

// TestForgedFieldsRemoved: fields only Moat writes (its check fields,
// SpamAssassin's, and Authentication-Results in Moat's name) are removed
// from the sender's header, folded lines too; everything else, the other
// servers' Authentication-Results and the body included, is kept.
func TestForgedFieldsRemoved(t *testing.T) {
	prepend := "X-Moat-Checks: score=0 action=deliver\r\nAuthentication-Results: mx.moat.test; spf=pass\r\nX-Spam-Score: 0.0\r\n"
	msg := "Received: from a by b\r\n" +
		"Authentication-Results: MX.moat.test; dkim=pass header.d=bank.example;\r\n\tdmarc=pass\r\n" +
		"Authentication-Results: other.example; spf=fail\r\n" +
		"X-Spam-Status: No, score=-5.0\r\n" +
		"x-spam-flag: NO\r\n" +
		"X-Moat-Checks: score=-50\r\n" +
		"Subject: hello\r\n" +
		"X-Spam-Level:\r\n\t***\r\n" +
		"\r\n" +
		"X-Spam-Status: in the body stays\r\n"
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	if err := copyMessage(newNormWriter(bw, false), strings.NewReader(msg), "", prepend); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	want := "Received: from a by b\r\n" +
		"Authentication-Results: other.example; spf=fail\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"X-Spam-Status: in the body stays\r\n"
	if out.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", out.String(), want)
	}
	// A message Moat wrote nothing above (its own DSN) is copied as is.
	out.Reset()
	bw.Reset(&out)
	copyMessage(newNormWriter(bw, false), strings.NewReader(msg), "", "")
	bw.Flush()
	if out.String() != msg {
		t.Fatalf("without prepend: %q", out.String())
	}
}
