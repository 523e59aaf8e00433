package queue

import (
	"bufio"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

type dsnReport struct {
	human   string
	msg     textproto.MIMEHeader   // per-message fields
	rcpts   []textproto.MIMEHeader // per-recipient fields
	headers string                 // text/rfc822-headers
}

// parseDSN parses an RFC 3464 report with go-message and checks its
// structure.
func parseDSN(t *testing.T, body string) dsnReport {
	t.Helper()
	if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
		t.Fatal("DSN has bare LF line endings")
	}
	e, err := message.Read(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q %v %v", mt, params, err)
	}
	if e.Header.Get("Auto-Submitted") != "auto-replied" || e.Header.Get("From") == "" || e.Header.Get("Message-Id") == "" {
		t.Fatalf("DSN header %v", e.Header)
	}
	mr := e.MultipartReader()
	var rep dsnReport
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pt, _, _ := p.Header.ContentType()
		types = append(types, pt)
		b, _ := io.ReadAll(p.Body)
		switch pt {
		case "text/plain":
			rep.human = string(b)
		case "message/delivery-status":
			tr := textproto.NewReader(bufio.NewReader(strings.NewReader(string(b))))
			for i := 0; ; i++ {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					if i == 0 {
						rep.msg = h
					} else {
						rep.rcpts = append(rep.rcpts, h)
					}
				}
				if err != nil {
					break
				}
			}
		case "text/rfc822-headers":
			rep.headers = string(b)
		}
	}
	if strings.Join(types, ",") != "text/plain,message/delivery-status,text/rfc822-headers" {
		t.Fatalf("parts %v", types)
	}
	return rep
}

func TestReadHeader(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\nB: 2\n\nbody\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\r\nB: 2", "A: 1\r\n"},
		{"", ""},
		{"A: " + strings.Repeat("x", 70000) + "\r\n", ""},
	} {
		got, err := readHeader(strings.NewReader(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("readHeader(%.20q) = %.40q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// Remote-MTA names the backend's host: the relay reports "host:port",
// and a port is not part of a "dns" MTA name (RFC 3464 2.3.5).
func TestDSNRemoteMTAIsHostName(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hostname = "moat.test"
	env := &Envelope{ID: "0000000000000001", From: "a@b.test", Received: time.Now()}
	for host, want := range map[string]string{
		"127.0.0.1:2830":   "dns; 127.0.0.1",
		"mx.a.test:25":     "dns; mx.a.test",
		"[2001:db8::1]:25": "dns; 2001:db8::1",
		"mx.a.test":        "dns; mx.a.test",
	} {
		rc := RcptState{Addr: "x@a.test", Status: StatusFailed, Host: host, LastReply: "550 5.1.1 no", DSNStatus: "5.1.1"}
		rep := parseDSN(t, string(buildDSN(cfg, env, []RcptState{rc}, dsnFailed, []byte("Subject: s\r\n"), time.Now())))
		if got := rep.rcpts[0].Get("Remote-MTA"); got != want {
			t.Errorf("Host %q: Remote-MTA %q, want %q", host, got, want)
		}
	}
}
