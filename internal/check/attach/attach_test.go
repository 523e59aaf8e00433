package attach

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/verdict"
)

type part struct {
	name     string // filename parameter, written as given
	nameStar string // RFC 2231 filename*=UTF-8''... value (already encoded)
	ctype    string
	data     []byte
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func b64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\n")
		s = s[76:]
	}
	b.WriteString(s + "\n")
	return b.String()
}

func msg(parts ...part) []byte {
	var b strings.Builder
	b.WriteString("From: a@example.org\nTo: b@example.com\nSubject: files\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B0\"\n\n")
	b.WriteString("--B0\nContent-Type: text/plain\n\nSee attached.\n")
	for _, p := range parts {
		ct := p.ctype
		if ct == "" {
			ct = "application/octet-stream"
		}
		b.WriteString("--B0\nContent-Type: " + ct + "\nContent-Transfer-Encoding: base64\n")
		switch {
		case p.nameStar != "":
			b.WriteString("Content-Disposition: attachment; filename*=UTF-8''" + p.nameStar + "\n")
		case p.name != "":
			b.WriteString("Content-Disposition: attachment; filename=\"" + p.name + "\"\n")
		}
		b.WriteString("\n" + b64(p.data))
	}
	b.WriteString("--B0--\n")
	return []byte(crlf(b.String()))
}

type entry struct {
	name      string
	data      []byte
	encrypted bool
}

func mkzip(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		fh := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		if len(e.data) == 0 {
			fh.Method = zip.Store // cheap: no compressor per entry
		}
		if e.encrypted {
			fh.Flags |= 1 // what "zip -e" sets; the data is then ZipCrypto
		}
		w, err := zw.CreateHeader(fh)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(e.data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testConfig() Config { return DefaultConfig() }

func inspect(t testing.TB, raw []byte, p *Policy) []Finding {
	t.Helper()
	pol := DefaultPolicy()
	if p == nil {
		p = &pol
	}
	f, err := Inspect(bytes.NewReader(raw), testConfig(), p)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func kinds(fs []Finding) string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Kind.String()+":"+f.Path())
	}
	return strings.Join(out, " ")
}

// A PE file's first bytes: "MZ", e_lfanew at 60 pointing at "PE\0\0".
func peBytes() []byte {
	b := make([]byte, 256)
	b[0], b[1] = 'M', 'Z'
	b[60] = 128
	copy(b[128:], "PE\x00\x00")
	return b
}

func TestInspect(t *testing.T) {
	pdf := []byte("%PDF-1.4\n% a harmless document\n")
	cases := []struct {
		name string
		raw  []byte
		want string // kinds() of the findings
	}{
		{"clean", msg(part{name: "report.pdf", ctype: "application/pdf", data: pdf}), ""},
		{"no-attachments", []byte(crlf("From: a@b\nSubject: hi\n\nhello\n")), ""},
		{"exe", msg(part{name: "setup.exe", data: []byte("whatever")}), "blocked_extension:setup.exe"},
		{"upper-case", msg(part{name: "SETUP.EXE", data: []byte("x")}), "blocked_extension:SETUP.EXE"},
		{"trailing-dot-space", msg(part{name: "run.js. ", data: []byte("x")}), "blocked_extension:run.js"},
		{"double", msg(part{name: "invoice.pdf.exe", data: []byte("x")}), "blocked_extension:invoice.pdf.exe double_extension:invoice.pdf.exe"},
		{"padded", msg(part{name: "invoice.pdf                 .js", data: []byte("x")}), "blocked_extension:invoice.pdf                 .js double_extension:invoice.pdf                 .js"},
		{"rlo", msg(part{nameStar: "invoice%E2%80%AEfdp.exe", data: []byte("x")}), "deceptive_name:invoicefdp.exe blocked_extension:invoicefdp.exe"},
		{"rlo-harmless-ext", msg(part{nameStar: "photo%E2%80%AEgpj.txt", data: []byte("x")}), "deceptive_name:photogpj.txt"},
		{"zero-width", msg(part{nameStar: "doc%E2%80%8B.pdf", data: pdf}), "deceptive_name:doc.pdf"},
		{"rfc2047-name", msg(part{name: "=?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte("Rechnung.pdf.vbs")) + "?=", data: []byte("x")}),
			"blocked_extension:Rechnung.pdf.vbs double_extension:Rechnung.pdf.vbs"},
		{"type-declared", msg(part{name: "tool.bin", ctype: "application/x-msdownload", data: []byte("x")}), "blocked_type:tool.bin"},
		{"type-sniffed", msg(part{name: "scan.pdf", ctype: "application/pdf", data: peBytes()}), "blocked_type:scan.pdf"},
		{"mz-not-pe", msg(part{name: "x.dat", data: append([]byte("MZ"), make([]byte, 100)...)}), ""},
		{"elf", msg(part{name: "x.dat", data: []byte("\x7fELF\x02\x01\x01")}), "blocked_type:x.dat"},
		{"zip-clean", msg(part{name: "docs.zip", ctype: "application/zip", data: mkzip(t, entry{name: "a.pdf", data: pdf}, entry{name: "dir/", data: nil})}), ""},
		{"zip-exe", msg(part{name: "docs.zip", ctype: "application/zip", data: mkzip(t, entry{name: "a.pdf", data: pdf}, entry{name: "dir/Invoice.PDF.scr", data: []byte("x")})}),
			"blocked_extension:docs.zip/Invoice.PDF.scr double_extension:docs.zip/Invoice.PDF.scr"},
		{"zip-by-magic", msg(part{name: "archive.dat", data: mkzip(t, entry{name: "x.js", data: []byte("x")})}), "blocked_extension:archive.dat/x.js"},
		{"zip-nested", msg(part{name: "outer.zip", data: mkzip(t, entry{name: "inner.zip", data: mkzip(t, entry{name: "run.bat", data: []byte("x")})})}),
			"blocked_extension:outer.zip/inner.zip/run.bat"},
		{"zip-too-deep", msg(part{name: "l1.zip", data: mkzip(t, entry{name: "l2.zip", data: mkzip(t, entry{name: "l3.zip", data: mkzip(t, entry{name: "run.bat", data: []byte("x")})})})}),
			"archive_limit:l1.zip/l2.zip/l3.zip"},
		{"zip-encrypted", msg(part{name: "secret.zip", data: mkzip(t, entry{name: "contract.pdf", data: pdf, encrypted: true})}), "encrypted_archive:secret.zip"},
		{"zip-encrypted-exe", msg(part{name: "secret.zip", data: mkzip(t, entry{name: "a.exe", data: pdf, encrypted: true})}), "blocked_extension:secret.zip/a.exe encrypted_archive:secret.zip"},
		{"zip-corrupt", msg(part{name: "broken.zip", data: []byte("PK\x03\x04 this is not really a zip file at all, sorry")}), "archive_limit:broken.zip"},
		{"attached-message", msg(part{name: "fwd.eml", ctype: "message/rfc822", data: msg(part{name: "payload.hta", data: []byte("x")})}), "blocked_extension:payload.hta"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := kinds(inspect(t, tc.raw, nil)); got != tc.want {
				t.Fatalf("findings %q, want %q", got, tc.want)
			}
		})
	}
}

// Content-Disposition and Content-Type names are both checked, and a
// malformed parameter list does not hide the name.
func TestNameSources(t *testing.T) {
	for name, hdr := range map[string]string{
		"ctype-name":      "Content-Type: application/octet-stream; name=\"evil.exe\"\nContent-Disposition: attachment; filename=\"nice.pdf\"\n",
		"duplicate-param": "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"nice.pdf\"; filename=\"evil.exe\"\n",
		"unquoted-broken": "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=evil.exe; size=\"\n",
	} {
		raw := crlf("From: a@b\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n--B\n" + hdr + "Content-Transfer-Encoding: base64\n\neA==\n--B--\n")
		fs := inspect(t, []byte(raw), nil)
		found := false
		for _, f := range fs {
			found = found || f.Kind == BlockedExtension
		}
		if !found {
			t.Errorf("%s: findings %q", name, kinds(fs))
		}
	}
}

func TestZipBombs(t *testing.T) {
	cfg := testConfig()
	pol := DefaultPolicy()
	cfg.MaxArchiveBytes = 1 << 20
	// 3 MiB of zeros (3 KB compressed) in an entry named like an archive:
	// declared honestly, and with a lying header declaring 100 bytes.
	var raw bytes.Buffer
	fw, _ := flate.NewWriter(&raw, flate.BestSpeed)
	fw.Write(make([]byte, 3<<20))
	fw.Close()
	bomb := func(declared uint64) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, err := zw.CreateRaw(&zip.FileHeader{Name: "inner.zip", Method: zip.Deflate, CompressedSize64: uint64(raw.Len()), UncompressedSize64: declared})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(raw.Bytes())
		zw.Close()
		return buf.Bytes()
	}
	// Many entries.
	many := make([]entry, cfg.MaxArchiveEntries+1)
	for i := range many {
		many[i] = entry{name: fmt.Sprintf("f%d.txt", i)}
	}
	for name, tc := range map[string]struct {
		raw  []byte
		want string
	}{
		"nested-3MiB":  {msg(part{name: "bomb.zip", data: bomb(3 << 20)}), "archive_limit:bomb.zip/inner.zip"},
		"lying-size":   {msg(part{name: "bomb.zip", data: bomb(100)}), "archive_limit:bomb.zip/inner.zip"},
		"many-entries": {msg(part{name: "many.zip", data: mkzip(t, many...)}), "archive_limit:many.zip"},
	} {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			fs, err := Inspect(bytes.NewReader(tc.raw), cfg, &pol)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(fs); got != tc.want {
				t.Fatalf("findings %q, want %q", got, tc.want)
			}
			// Bounded work: far less than the bomb's decompressed size.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(4*cfg.MaxArchiveBytes+int64(8*len(tc.raw))) {
				t.Fatalf("allocated %d bytes", alloc)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	cfg := testConfig()
	cfg.MaxParts = 3
	pol := DefaultPolicy()
	var parts []part
	for i := 0; i < 5; i++ {
		parts = append(parts, part{name: fmt.Sprintf("f%d.txt", i), data: []byte("x")})
	}
	parts = append(parts, part{name: "late.exe", data: []byte("x")})
	fs, err := Inspect(bytes.NewReader(msg(parts...)), cfg, &pol)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(fs); got != "archive_limit:" {
		t.Fatalf("findings %q", got)
	}
	// Deep MIME nesting stops at max_depth.
	cfg = testConfig()
	cfg.MaxDepth = 3
	raw := "From: a@b\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B0\"\n\n"
	for i := 1; i < 6; i++ {
		raw += fmt.Sprintf("--B%d\nContent-Type: multipart/mixed; boundary=\"B%d\"\n\n", i-1, i)
	}
	raw += "--B5\nContent-Type: application/octet-stream; name=\"deep.exe\"\n\nx\n"
	fs, _ = Inspect(strings.NewReader(crlf(raw)), cfg, &pol)
	if got := kinds(fs); got != "mime_depth: archive_limit:" { // and the parts left unterminated
		t.Fatalf("deep: findings %q", got)
	}
	// What lies deeper was not inspected (nor, past its recursion limit,
	// by the virus scanner): by default a person decides.
	def := DefaultPolicy()
	if res := Evaluate(fs, &def); res.Hard == nil || res.Hard.Action != verdict.Quarantine || !strings.Contains(res.Hard.Reply.Text, "nested too deep") {
		t.Fatalf("deep: %+v, want held for review", res.Hard)
	}
}

func spool(t testing.TB, raw []byte) *pipeline.Message {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return &pipeline.Message{Header: textproto.MIMEHeader{}, Size: int64(len(raw)), Open: func() (io.ReadCloser, error) { return os.Open(p) }}
}

func txn(domain string) *pipeline.Txn {
	return &pipeline.Txn{ID: "T", Conn: &pipeline.Conn{Report: &verdict.Report{}}, Report: &verdict.Report{},
		Rcpts: []*pipeline.Rcpt{{Domain: domain, Report: &verdict.Report{}}}, Log: slog.New(slog.DiscardHandler)}
}

func TestCheckVerdicts(t *testing.T) {
	lenient := DefaultPolicy()
	lenient.BlockedExtensions = []string{".scr"}
	lenient.BlockedExtension = Rule{ActionFlag, 3}
	lenient.EncryptedArchive = Rule{ActionQuarantine, 0}
	src := func(domain string) *Policy {
		if domain == "lenient.example" {
			return &lenient
		}
		return nil
	}
	reg := prometheus.NewRegistry()
	c, err := New(DefaultConfig(), nil, reg, src)
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	run := func(domain string, raw []byte) (verdict.Result, policy.Decision) {
		r := pipeline.NewRunner([]pipeline.Check{c}, func(string) *policy.Policy { return pol }, 10*time.Second)
		tx := txn(domain)
		d := r.Data(context.Background(), tx, spool(t, raw))
		res, _ := tx.Report.Result(Name)
		return res, d
	}
	res, d := run("example.com", msg(part{name: "invoice.pdf.exe", data: []byte("x")}))
	if d.Action != verdict.Reject || d.Reply.String() != "554 5.7.1 Message rejected: attachment type not allowed (invoice.pdf.exe)" {
		t.Fatalf("decision %+v", d)
	}
	if len(res.Symbols) != 2 || res.Symbols[0].Name != "ATTACH_BLOCKED_EXT" || res.Symbols[1].Name != "ATTACH_DOUBLE_EXT" {
		t.Fatalf("symbols %+v", res.Symbols)
	}
	// Encrypted archive: flagged with its score only.
	res, d = run("example.com", msg(part{name: "s.zip", data: mkzip(t, entry{name: "c.pdf", data: []byte("x"), encrypted: true})}))
	if res.Hard != nil || d.Action != verdict.NoOpinion || d.Score != 4 || res.Symbols[0].Name != "ATTACH_ENCRYPTED_ARCHIVE" {
		t.Fatalf("encrypted: %+v %+v", res, d)
	}
	// The lenient domain: .exe is not blocked, but invoice.pdf.exe is still
	// a double extension (rejected); .scr only flagged; encrypted archives
	// quarantined.
	_, d = run("lenient.example", msg(part{name: "setup.exe", data: []byte("x")}))
	if d.Action != verdict.NoOpinion {
		t.Fatalf("lenient exe: %+v", d)
	}
	_, d = run("lenient.example", msg(part{name: "invoice.pdf.exe", data: []byte("x")}))
	if d.Action != verdict.Reject {
		t.Fatalf("lenient double: %+v", d)
	}
	res, d = run("lenient.example", msg(part{name: "saver.scr", data: []byte("x")}))
	if d.Action != verdict.NoOpinion || d.Score != 3 || res.Hard != nil {
		t.Fatalf("lenient scr: %+v %+v", res, d)
	}
	_, d = run("lenient.example", msg(part{name: "s.zip", data: mkzip(t, entry{name: "c.pdf", data: []byte("x"), encrypted: true})}))
	if d.Action != verdict.Quarantine || d.Reply.Code != 554 {
		t.Fatalf("lenient encrypted: %+v", d)
	}
	// Metrics counted by kind.
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("gather: %v %v", mfs, err)
	}
	counts := map[string]float64{}
	for _, m := range mfs[0].Metric {
		counts[m.Label[0].GetValue()] = m.Counter.GetValue()
	}
	if counts["double_extension"] != 2 || counts["encrypted_archive"] != 2 || counts["blocked_extension"] != 2 {
		t.Fatalf("counts %v", counts)
	}
}

func TestReplyNameIsSafe(t *testing.T) {
	pol := DefaultPolicy()
	fs := inspect(t, msg(part{nameStar: "%E6%97%A5%E6%9C%AC%E2%80%AE(x)%0D%0A250%20ok.exe", data: []byte("x")}), nil)
	res := Evaluate(fs, &pol)
	if res.Hard == nil {
		t.Fatalf("no verdict: %q", kinds(fs))
	}
	txt := res.Hard.Reply.Text
	for _, r := range txt {
		if r < 0x20 || r > 0x7e {
			t.Fatalf("unsafe reply text %q", txt)
		}
	}
	if !strings.HasSuffix(txt, "250 ok.exe)") || strings.Count(txt, "(") != 1 {
		t.Fatalf("reply text %q", txt)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.MaxParts = 0 }, "max_parts:"},
		{func(c *Config) { c.MaxDepth = 0 }, "max_depth:"},
		{func(c *Config) { c.MaxArchiveBytes = 1 }, "max_archive_bytes:"},
		{func(c *Config) { c.MaxArchiveEntries = 0 }, "max_archive_entries:"},
		{func(c *Config) { c.MaxArchiveNesting = 9 }, "max_archive_nesting:"},
		{func(c *Config) { c.MaxTotalBytes = 1024 }, "max_total_bytes:"},
		{func(c *Config) { c.Policy.BlockedExtensions = []string{"exe"} }, "policy.blocked_extensions:"},
		{func(c *Config) { c.Policy.BlockedTypes = []string{"exe"} }, "policy.blocked_types:"},
		{func(c *Config) { c.Policy.DoubleExtension.Action = "drop" }, "policy.double_extension.action:"},
		{func(c *Config) { c.Policy.ArchiveLimit.Score = -1 }, "policy.archive_limit.score:"},
	} {
		cfg := DefaultConfig()
		tc.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got %v, want prefix %q", err, tc.want)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func FuzzInspect(f *testing.F) {
	f.Add(msg(part{name: "invoice.pdf.exe", data: []byte("x")}))
	f.Add(msg(part{name: "a.zip", data: mkzip(f, entry{name: "b.zip", data: mkzip(f, entry{name: "c.js"})}, entry{name: "e.pdf", encrypted: true})}))
	f.Add([]byte(crlf("Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: message/rfc822\n\nContent-Type: multipart/mixed; boundary=y\n\n--y\n\n--y--\n--x--\n")))
	cfg := testConfig()
	cfg.MaxArchiveBytes = 1 << 20
	cfg.MaxTotalBytes = 4 << 20
	pol := DefaultPolicy()
	f.Fuzz(func(t *testing.T, raw []byte) {
		fs, err := Inspect(bytes.NewReader(raw), cfg, &pol)
		if err != nil {
			t.Fatal(err)
		}
		res := Evaluate(fs, &pol)
		if res.Hard != nil {
			for _, r := range res.Hard.Reply.Text {
				if r < 0x20 || r > 0x7e {
					t.Fatalf("unsafe reply %q", res.Hard.Reply.Text)
				}
			}
		}
	})
}

func FuzzZip(f *testing.F) {
	f.Add(mkzip(f, entry{name: "inner.zip", data: mkzip(f, entry{name: "x.exe"})}))
	f.Add(mkzip(f, entry{name: "a.txt", encrypted: true}))
	cfg := testConfig()
	cfg.MaxArchiveBytes = 1 << 20
	pol := DefaultPolicy()
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &inspector{lim: cfg, pol: compile(&pol), seen: map[Finding]bool{}, budget: cfg.MaxTotalBytes}
		in.zip(data, "f.zip", 1)
	})
}

func BenchmarkInspect(b *testing.B) {
	pol := DefaultPolicy()
	raw := msg(part{name: "report.pdf", ctype: "application/pdf", data: bytes.Repeat([]byte("%PDF data "), 10000)},
		part{name: "docs.zip", data: mkzip(b, entry{name: "a.pdf", data: bytes.Repeat([]byte("x"), 50000)}, entry{name: "b.docx", data: []byte("y")})})
	b.SetBytes(int64(len(raw)))
	for i := 0; i < b.N; i++ {
		if _, err := Inspect(bytes.NewReader(raw), DefaultConfig(), &pol); err != nil {
			b.Fatal(err)
		}
	}
}

// An archive encrypted by Info-ZIP's zip (ZipCrypto), not just a flag we set.
func TestRealEncryptedZip(t *testing.T) {
	zipPath := clamdtest.Tool(t, "zip")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "contract.pdf"), []byte("%PDF-1.4 secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(zipPath, "-q", "-e", "-P", "secret", "out.zip", "contract.pdf")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zip: %v %s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "out.zip"))
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(inspect(t, msg(part{name: "out.zip", ctype: "application/zip", data: data}), nil)); got != "encrypted_archive:out.zip" {
		t.Fatalf("findings %q", got)
	}
}
