package message

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func parse(s string) *Message { return ParseBytes([]byte(s), DefaultLimits()) }

func TestNestedMultipartAndEncodings(t *testing.T) {
	raw := "From: =?iso-8859-1?q?J=F6rg?= <j@example.com>\r\n" +
		"Subject: =?utf-8?b?SGVsbG8g8J+Ygg==?=\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=outer\r\n\r\n" +
		"preamble\r\n--outer\r\n" +
		"Content-Type: multipart/alternative; boundary=inner\r\n\r\n" +
		"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"Gr=FC=DFe aus K=F6ln, see http://www.example.org/page.\r\n" +
		"--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"PHA+SGk8L3A+\r\n" + // <p>Hi</p>
		"--inner--\r\n" +
		"--outer\r\nContent-Type: application/pdf; name=\"=?utf-8?q?R=C3=A9sum=C3=A9.pdf?=\"\r\nContent-Disposition: attachment; filename*=utf-8''%E2%82%AC.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n" +
		"--outer--\r\n"
	m := parse(raw)
	if m.Subject != "Hello 😂" {
		t.Errorf("subject %q", m.Subject)
	}
	if !strings.Contains(m.From, "Jörg") {
		t.Errorf("from %q", m.From)
	}
	if !strings.Contains(m.Text, "Grüße aus Köln") || !strings.Contains(m.Text, "Hi") {
		t.Errorf("text %q", m.Text)
	}
	if len(m.Attachments) != 1 || m.Attachments[0].Filename != "€.pdf" || m.Attachments[0].ContentType != "application/pdf" || m.Attachments[0].Size != 5 {
		t.Errorf("attachments %+v", m.Attachments)
	}
	if len(m.URLs) != 1 || m.URLs[0].Host != "www.example.org" || m.URLs[0].Raw != "http://www.example.org/page" {
		t.Errorf("urls %+v", m.URLs)
	}
	if m.Parts != 5 || len(m.Malformed) != 0 {
		t.Errorf("parts %d malformed %v", m.Parts, m.Malformed)
	}
}

func TestRFC2047AttachmentName(t *testing.T) {
	m := parse("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=\"=?utf-8?b?cmVjaG51bmcuZXhl?=\"\r\n\r\nMZ\r\n--b--\r\n")
	if len(m.Attachments) != 1 || m.Attachments[0].Filename != "rechnung.exe" {
		t.Fatalf("%+v", m.Attachments)
	}
}

func TestBrokenBase64(t *testing.T) {
	m := parse("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQ=\r\n!!!!not base64!!!!\r\n")
	if !m.HasMalformed("base64") {
		t.Fatalf("malformed %v", m.Malformed)
	}
	if !strings.Contains(m.Text, "Hello world") {
		t.Errorf("decoded prefix lost: %q", m.Text)
	}
}

func TestWrongAndUnknownCharset(t *testing.T) {
	// Declared utf-8 but Latin-1 bytes: text stays valid UTF-8.
	m := parse("Content-Type: text/plain; charset=utf-8\r\n\r\nK\xf6ln\r\n")
	if !strings.Contains(m.Text, "K\uFFFDln") {
		t.Errorf("text %q", m.Text)
	}
	m = parse("Content-Type: text/plain; charset=x-klingon\r\n\r\nqapla'\r\n")
	if !m.HasMalformed("charset") || !strings.Contains(m.Text, "qapla") {
		t.Errorf("unknown charset: %v %q", m.Malformed, m.Text)
	}
	m = parse("Content-Type: text/plain; charset=windows-1252\r\n\r\n\x93quoted\x94 \x80\r\n")
	if !strings.Contains(m.Text, "“quoted” €") {
		t.Errorf("cp1252: %q", m.Text)
	}
}

func TestHTMLOnlyHiddenText(t *testing.T) {
	m := parse("Content-Type: text/html\r\n\r\n<html><head><title>t</title><style>p{color:red}</style><script>var x=1</script></head>" +
		`<body bgcolor="#ffffff"><p>Buy now</p><div style="display:none">lorem hidden1</div>` +
		`<span style="font-size:1px">hidden2</span><font color="#FFFFFF">hidden3</font><font size="0">hidden4</font>` +
		`<a href="http://phish.example/login">https://bank.example</a><img src="http://img.example/p.gif"></body></html>`)
	if m.TextOnlyIn != "html" || !m.HTML {
		t.Errorf("TextOnlyIn %q", m.TextOnlyIn)
	}
	for _, h := range []string{"hidden1", "hidden2", "hidden3", "hidden4"} {
		if strings.Contains(m.Text, h) || !strings.Contains(m.HiddenText, h) {
			t.Errorf("%s: text %q hidden %q", h, m.Text, m.HiddenText)
		}
	}
	if strings.Contains(m.Text, "var x") || strings.Contains(m.Text, "color:red") || !strings.Contains(m.Text, "Buy now") {
		t.Errorf("text %q", m.Text)
	}
	var found bool
	for _, u := range m.URLs {
		if u.Host == "phish.example" && u.InHTML && u.Text == "https://bank.example" {
			found = true
		}
	}
	if !found {
		t.Errorf("urls %+v", m.URLs)
	}
}

func TestMalformedStructures(t *testing.T) {
	cases := map[string]string{
		"no_boundary": "Content-Type: multipart/mixed\r\n\r\nbody\r\n",
		"header":      "Subject hello no colon\r\nFrom: x\r\n\r\nbody\r\n",
		"depth":       "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n" + strings.Repeat("Content-Type: message/rfc822\r\n\r\n", 20) + "x\r\n--a--\r\n",
	}
	for want, raw := range cases {
		m := parse(raw)
		if !m.HasMalformed(want) {
			t.Errorf("%s: malformed %v", want, m.Malformed)
		}
	}
}

func TestLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("Content-Type: multipart/mixed; boundary=x\r\n\r\n")
	for i := 0; i < 500; i++ {
		b.WriteString("--x\r\nContent-Type: text/plain\r\n\r\npart\r\n")
	}
	b.WriteString("--x--\r\n")
	m := ParseBytes([]byte(b.String()), Limits{MaxParts: 50, MaxDepth: 5, MaxDecodedBytes: 1 << 20})
	if m.Parts > 50 || !m.HasMalformed("too_many_parts") {
		t.Errorf("parts %d malformed %v", m.Parts, m.Malformed)
	}
	big := "Content-Type: text/plain\r\n\r\n" + strings.Repeat("a", 100000)
	m = ParseBytes([]byte(big), Limits{MaxParts: 5, MaxDepth: 5, MaxDecodedBytes: 1000})
	if len(m.Text) > 1000 || !m.HasMalformed("too_large") {
		t.Errorf("len %d malformed %v", len(m.Text), m.Malformed)
	}
	// Deeply nested multiparts end at MaxDepth without recursion blowup.
	var d strings.Builder
	for i := 0; i < 5000; i++ {
		d.WriteString("Content-Type: multipart/mixed; boundary=b" + string(rune('a'+i%26)) + "\r\n\r\n--b" + string(rune('a'+i%26)) + "\r\n")
	}
	m = ParseBytes([]byte(d.String()), DefaultLimits())
	if !m.HasMalformed("depth") {
		t.Errorf("deep nesting: %v", m.Malformed)
	}
}

func TestFingerprintStable(t *testing.T) {
	a := parse("Received: from a\r\nSubject: Hi\r\n\r\nSame   body\r\ntext\r\n")
	b := parse("Received: from b\r\nReceived: from c\r\nSubject: hi\r\n\r\nsame body text\r\n")
	c := parse("Subject: hi\r\n\r\nother body\r\n")
	if a.Fingerprint != b.Fingerprint || a.Fingerprint == c.Fingerprint {
		t.Fatal("fingerprint")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--a--\r\n"))
	f.Add([]byte("Content-Type: text/html; charset=iso-2022-jp\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://x.example\">y</a><div style=3D\"display:none\">z"))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/alternative; boundary=\"q\"\r\n\r\n--q\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(bytes.NewReader(data), Limits{MaxParts: 20, MaxDepth: 5, MaxDecodedBytes: 1 << 16, MaxRawBody: 1 << 12, MaxTime: time.Second})
		if err != nil || m == nil {
			t.Fatal("Parse failed on an in-memory reader")
		}
		if m.Parts > 20 {
			t.Fatalf("parts %d", m.Parts)
		}
		if !utf8Valid(m.Text) || !utf8Valid(m.Subject) {
			t.Fatal("invalid UTF-8 in decoded text")
		}
	})
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "") == s }
