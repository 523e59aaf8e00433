package clamav

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/clamd"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/verdict"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clamdtest.Cleanup()
	os.Exit(code)
}

func newCheck(t testing.TB, mod func(*Config), addrs ...string) *Check {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addrs = addrs
	cfg.StreamMaxLength = clamdtest.DefaultStreamMaxLength
	cfg.ScanTimeout = 10 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// spool writes raw to a file and returns the pipeline view of it, as the
// session hands it to DATA checks.
func spool(t testing.TB, raw []byte) *pipeline.Message {
	t.Helper()
	p := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return &pipeline.Message{Header: textproto.MIMEHeader{}, Size: int64(len(raw)), Open: func() (io.ReadCloser, error) { return os.Open(p) }}
}

func txn() *pipeline.Txn {
	return &pipeline.Txn{ID: "T1", Conn: &pipeline.Conn{Report: &verdict.Report{}}, Report: &verdict.Report{},
		Rcpts: []*pipeline.Rcpt{{Domain: "example.com", Report: &verdict.Report{}}}, Log: slog.New(slog.DiscardHandler)}
}

func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

func plainMsg(body string) []byte {
	return crlf("From: a@example.org\nTo: b@example.com\nSubject: test\nMessage-ID: <1@example.org>\n\n" + body + "\n")
}

func attachMsg(name, ctype string, content []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString(content)
	var lines []string
	for len(b64) > 76 {
		lines = append(lines, b64[:76])
		b64 = b64[76:]
	}
	lines = append(lines, b64)
	return crlf("From: a@example.org\nTo: b@example.com\nSubject: invoice\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/mixed; boundary=\"XYZ\"\n\n--XYZ\nContent-Type: text/plain\n\nPlease see attached.\n" +
		"--XYZ\nContent-Type: " + ctype + "; name=\"" + name + "\"\nContent-Transfer-Encoding: base64\n" +
		"Content-Disposition: attachment; filename=\"" + name + "\"\n\n" + strings.Join(lines, "\n") + "\n--XYZ--\n")
}

func zipOf(t testing.TB, files map[string][]byte) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func header(res verdict.Result) string {
	for _, f := range res.Headers {
		if f.Name == Header {
			return f.Value
		}
	}
	return ""
}

// decide runs the result through the default policy, as the Runner does.
func decide(res verdict.Result) policy.Decision {
	res.Check = Name
	return policy.Default().Decide([]verdict.Result{res}, policy.Content)
}

func TestVerdicts(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newCheck(t, nil, cd.Unix)
	cases := []struct {
		name string
		raw  []byte
		sig  string
	}{
		{"clean", plainMsg("Hello, this is a perfectly normal message."), ""},
		{"clean-attachment", attachMsg("report.pdf", "application/pdf", []byte("%PDF-1.4 not really a pdf")), ""},
		{"eicar-plain", plainMsg(clamdtest.EICAR), clamdtest.EICARSignature},
		{"eicar-base64-attachment", attachMsg("eicar.com", "application/octet-stream", []byte(clamdtest.EICAR)), clamdtest.EICARSignature},
		{"eicar-in-zip", attachMsg("docs.zip", "application/zip", zipOf(t, map[string][]byte{"readme.txt": []byte("hi"), "eicar.com": []byte(clamdtest.EICAR)})), clamdtest.EICARSignature},
		{"sample-in-zip-in-zip", attachMsg("outer.zip", "application/zip", zipOf(t, map[string][]byte{"inner.zip": zipOf(t, map[string][]byte{"x.txt": []byte("payload " + clamdtest.SampleMarker)})})), clamdtest.SampleSignature},
		{"generated-sample", plainMsg("text " + clamdtest.SampleMarker + " text"), clamdtest.SampleSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The attachment really is encoded: the scanner must decode MIME
			// and unpack archives itself.
			if strings.Contains(tc.name, "attachment") || strings.Contains(tc.name, "zip") {
				if bytes.Contains(tc.raw, []byte(clamdtest.EICAR)) || bytes.Contains(tc.raw, []byte(clamdtest.SampleMarker)) {
					t.Fatal("test message carries the signature in clear")
				}
			}
			res := c.CheckData(context.Background(), txn(), spool(t, tc.raw))
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			d := decide(res)
			if tc.sig == "" {
				if res.Hard != nil || len(res.Symbols) != 0 || d.Action != verdict.NoOpinion {
					t.Fatalf("clean message: %+v, decision %+v", res, d)
				}
				if h := header(res); h != "clean (ClamAV 1.4.6)" && !strings.HasPrefix(h, "clean (ClamAV ") {
					t.Fatalf("header %q", h)
				}
				return
			}
			want := "554 5.7.1 Message rejected: virus found (" + tc.sig + ")"
			if res.Hard == nil || res.Hard.Reply.String() != want || res.Hard.Action != verdict.Reject {
				t.Fatalf("hard verdict %+v, want %q", res.Hard, want)
			}
			if d.Action != verdict.Reject || d.Reply.String() != want {
				t.Fatalf("decision %+v", d)
			}
			if len(res.Symbols) != 1 || res.Symbols[0].Name != SymVirusFound || res.Symbols[0].Detail != tc.sig {
				t.Fatalf("symbols %+v", res.Symbols)
			}
		})
	}
}

func TestScanExported(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newCheck(t, nil, cd.TCP)
	res, err := c.Scan(context.Background(), bytes.NewReader(attachMsg("a.com", "application/octet-stream", []byte(clamdtest.EICAR))))
	if err != nil || res.Status != Infected || res.Signature != clamdtest.EICARSignature || res.Addr != cd.TCP {
		t.Fatalf("%+v %v", res, err)
	}
	res, err = c.Scan(context.Background(), strings.NewReader("clean"))
	if err != nil || res.Status != Clean || res.Signature != "" {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestOversize(t *testing.T) {
	cd := clamdtest.Shared(t)
	// Over the limit, with the virus at the start: it cannot be scanned and
	// the policy decides.
	big := plainMsg(clamdtest.EICAR + "\n" + strings.Repeat("x", 76) + strings.Repeat("\n"+strings.Repeat("y", 76), int(cd.StreamMaxLength)/77))
	if int64(len(big)) <= cd.StreamMaxLength {
		t.Fatal("test message too small")
	}
	for _, tc := range []struct {
		policy string
		reply  string
		action verdict.Action
	}{
		{OversizeAccept, "", verdict.NoOpinion},
		{OversizeTempfail, "451 4.3.4 Message too large to scan for viruses, please try again later", verdict.TempFail},
		{OversizeReject, "552 5.3.4 Message too large to scan for viruses", verdict.Reject},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			c := newCheck(t, func(cfg *Config) { cfg.Oversize = tc.policy }, cd.Unix)
			m := spool(t, big)
			res := c.CheckData(context.Background(), txn(), m)
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if h := header(res); h != "unscanned (too large)" {
				t.Fatalf("header %q", h)
			}
			if len(res.Symbols) != 1 || res.Symbols[0].Name != SymUnscanned {
				t.Fatalf("symbols %+v", res.Symbols)
			}
			d := decide(res)
			if d.Action != tc.action || (tc.reply != "" && d.Reply.String() != tc.reply) {
				t.Fatalf("decision %+v, want %v %q", d, tc.action, tc.reply)
			}
			// Size unknown to the check (0): the client counts and stops.
			m.Size = 0
			if res2 := c.CheckData(context.Background(), txn(), m); header(res2) != "unscanned (too large)" {
				t.Fatalf("unknown size: %+v", res2)
			}
		})
	}
}

func TestScannerDownAndBack(t *testing.T) {
	cd := clamdtest.Start(t)
	c := newCheck(t, nil, cd.Addrs...)
	infected := spool(t, attachMsg("eicar.com", "application/octet-stream", []byte(clamdtest.EICAR)))
	if d := decide(c.CheckData(context.Background(), txn(), infected)); d.Action != verdict.Reject {
		t.Fatalf("before stop: %+v", d)
	}
	cd.Stop()
	res := c.CheckData(context.Background(), txn(), infected)
	if res.Err != nil {
		t.Fatalf("Err set (the policy would answer 4.3.0): %v", res.Err)
	}
	d := decide(res)
	if d.Reply.String() != "451 4.7.1 Virus scanner unavailable, please try again later" || d.Action != verdict.TempFail {
		t.Fatalf("scanner down: %+v", d)
	}
	if header(res) != "unscanned" {
		t.Fatalf("header %q", header(res))
	}
	if err := cd.Restart(); err != nil {
		t.Fatal(err)
	}
	d = decide(c.CheckData(context.Background(), txn(), infected))
	if d.Action != verdict.Reject || !strings.Contains(d.Reply.Text, clamdtest.EICARSignature) {
		t.Fatalf("after restart: %+v", d)
	}
}

func TestFailOpen(t *testing.T) {
	dead := "unix:" + filepath.Join(t.TempDir(), "none.sock")
	c := newCheck(t, func(cfg *Config) { cfg.FailOpen = true }, dead)
	res := c.CheckData(context.Background(), txn(), spool(t, plainMsg(clamdtest.EICAR)))
	if res.Hard != nil || res.Err != nil {
		t.Fatalf("fail_open gave %+v", res)
	}
	if header(res) != "unscanned" {
		t.Fatalf("header %q", header(res))
	}
	if len(res.Symbols) != 1 || res.Symbols[0].Name != SymUnscanned || !strings.Contains(res.Symbols[0].Detail, "unavailable") {
		t.Fatalf("symbols %+v", res.Symbols)
	}
	if d := decide(res); d.Action != verdict.NoOpinion {
		t.Fatalf("decision %+v", d)
	}
	// The exported Scan reports the failure itself.
	if _, err := c.Scan(context.Background(), strings.NewReader("x")); !errors.Is(err, clamd.ErrUnavailable) {
		t.Fatalf("Scan: %v", err)
	}
}

func TestFailover(t *testing.T) {
	cd := clamdtest.Shared(t)
	dead := "tcp:127.0.0.1:1"
	c := newCheck(t, nil, dead, cd.Unix)
	for i := 0; i < 4; i++ {
		res := c.CheckData(context.Background(), txn(), spool(t, plainMsg(clamdtest.EICAR)))
		if d := decide(res); d.Action != verdict.Reject {
			t.Fatalf("scan %d: %+v %+v", i, res, d)
		}
	}
}

// A message reader that cannot seek is reopened when a retry needs the
// message from the start.
func TestReopener(t *testing.T) {
	data := "0123456789"
	opens := 0
	open := func() (io.ReadCloser, error) { opens++; return io.NopCloser(strings.NewReader(data)), nil }
	first, _ := open()
	r := &reopener{open: open, cur: first}
	if pos, err := r.Seek(0, io.SeekCurrent); pos != 0 || err != nil {
		t.Fatal(pos, err)
	}
	buf := make([]byte, 4)
	io.ReadFull(r, buf)
	if pos, _ := r.Seek(0, io.SeekCurrent); pos != 4 {
		t.Fatalf("pos %d", pos)
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(r)
	if string(all) != data || opens != 2 {
		t.Fatalf("after rewind read %q with %d opens", all, opens)
	}
	if _, err := r.Seek(3, io.SeekStart); err == nil {
		t.Fatal("arbitrary seek accepted")
	}
}

// The check in the real Runner, with the policy's flag mode: the virus is
// scored (quarantine), not rejected.
func TestRunnerFlagMode(t *testing.T) {
	cd := clamdtest.Shared(t)
	c := newCheck(t, nil, cd.Unix)
	pol := policy.Default()
	pol.Layers[Name] = policy.Layer{Mode: policy.ModeFlag}
	r := pipeline.NewRunner([]pipeline.Check{c}, func(string) *policy.Policy { return pol }, 20*time.Second)
	d := r.Data(context.Background(), txn(), spool(t, plainMsg(clamdtest.EICAR)))
	if d.Action != verdict.Quarantine {
		t.Fatalf("flag mode: %+v", d)
	}
	pol.Layers[Name] = policy.Layer{Mode: policy.ModeReject}
	d = r.Data(context.Background(), txn(), spool(t, plainMsg(clamdtest.EICAR)))
	if d.Action != verdict.Reject || d.Reply.Code != 554 {
		t.Fatalf("reject mode: %+v", d)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Oversize = "drop"
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "oversize:") {
		t.Fatalf("got %v", err)
	}
	cfg = DefaultConfig()
	cfg.Addrs = nil
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "addrs:") {
		t.Fatalf("got %v", err)
	}
	if _, err := New(cfg, nil, nil); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}

func BenchmarkScan(b *testing.B) {
	cd := clamdtest.Shared(b)
	for _, size := range []int{4 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			c := newCheck(b, nil, cd.Unix)
			body := strings.Repeat("The quick brown fox jumps over the lazy dog, again and again.\n", size/62+1)
			m := spool(b, plainMsg(body)[:size])
			tx := txn()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if res := c.CheckData(context.Background(), tx, m); res.Hard != nil || res.Err != nil {
					b.Fatalf("%+v", res)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/msg")
		})
	}
}

// BenchmarkScanParallel: 4 KiB messages from 8 concurrent sessions.
func BenchmarkScanParallel(b *testing.B) {
	cd := clamdtest.Shared(b)
	c := newCheck(b, nil, cd.Unix)
	m := spool(b, plainMsg(strings.Repeat("The quick brown fox jumps over the lazy dog, again and again.\n", 66))[:4<<10])
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tx := txn()
		for pb.Next() {
			if res := c.CheckData(context.Background(), tx, m); res.Hard != nil || res.Err != nil {
				b.Errorf("%+v", res)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
