package queue

import (
	"bufio"
	"io"
	"net/textproto"
	"strings"
	"testing"

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
