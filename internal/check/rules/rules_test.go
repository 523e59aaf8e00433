package rules

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

func pmsg(raw string) *pipeline.Message {
	return &pipeline.Message{Size: int64(len(raw)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(raw)), nil
	}}
}

func names(r verdict.Result) string {
	var n []string
	for _, s := range r.Symbols {
		n = append(n, s.Name)
	}
	return strings.Join(n, ",")
}

const hdr = "From: a@b.example\r\nTo: c@d.example\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <x@b.example>\r\nSubject: hello\r\n\r\n"

func TestGTUBEAndReload(t *testing.T) {
	dir := t.TempDir()
	local := filepath.Join(dir, "local.rules")
	if err := os.WriteFile(local, []byte("body LOCAL_A /alpha/\nscore LOCAL_A 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	c, err := New(Config{LocalFiles: []string{local}, ReloadInterval: time.Nanosecond},
		Deps{Log: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	tx := &pipeline.Txn{Report: &verdict.Report{}}
	res := c.CheckData(context.Background(), tx, pmsg(hdr+"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"))
	var score float64
	for _, s := range res.Symbols {
		score += s.Score
	}
	if names(res) != "GTUBE" || score != 1000 {
		t.Fatalf("GTUBE: %+v", res)
	}
	if got := names(c.CheckData(context.Background(), tx, pmsg(hdr+"alpha beta\r\n"))); got != "LOCAL_A" {
		t.Fatalf("local rule: %q", got)
	}
	// Change the file: the next message sees the new rules (mtime differs).
	os.WriteFile(local, []byte("body LOCAL_B /beta/\nscore LOCAL_B 3\n"), 0o644)
	os.Chtimes(local, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	if got := names(c.CheckData(context.Background(), tx, pmsg(hdr+"alpha beta\r\n"))); got != "LOCAL_B" {
		t.Fatalf("after reload: %q", got)
	}
	// A broken file keeps the previous rules and logs file:line.
	os.WriteFile(local, []byte("body OK /x/\nbody BROKEN /(/\n"), 0o644)
	os.Chtimes(local, time.Now().Add(2*time.Hour), time.Now().Add(2*time.Hour))
	if got := names(c.CheckData(context.Background(), tx, pmsg(hdr+"alpha beta\r\n"))); got != "LOCAL_B" {
		t.Fatalf("after broken reload: %q", got)
	}
	if !strings.Contains(logs.String(), local+":2") {
		t.Fatalf("log does not name file:line: %s", logs.String())
	}
	if err := c.Reload(); err == nil {
		t.Fatal("Reload of a broken file succeeded")
	}
}

func TestMetaSeesOtherChecksSymbols(t *testing.T) {
	dir := t.TempDir()
	local := filepath.Join(dir, "local.rules")
	os.WriteFile(local, []byte("symbol DNSBL_X\nbody __W /winner/i\nmeta WIN_LISTED DNSBL_X && __W\nscore WIN_LISTED 4\n"), 0o644)
	c, err := New(Config{LocalFiles: []string{local}}, Deps{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tx := &pipeline.Txn{Report: &verdict.Report{}}
	if got := names(c.CheckData(context.Background(), tx, pmsg(hdr+"Big WINNER news\r\n"))); got != "" {
		t.Fatalf("without DNSBL_X: %q", got)
	}
	tx.Report.Add(verdict.Result{Check: "dnsbl", Symbols: []verdict.Symbol{{Name: "DNSBL_X", Score: 1}}})
	if got := names(c.CheckData(context.Background(), tx, pmsg(hdr+"Big WINNER news\r\n"))); got != "WIN_LISTED" {
		t.Fatalf("with DNSBL_X: %q", got)
	}
}

func TestNewRejectsBrokenFile(t *testing.T) {
	local := filepath.Join(t.TempDir(), "bad.rules")
	os.WriteFile(local, []byte("\nheader X Subject =~ /[/\n"), 0o644)
	_, err := New(Config{LocalFiles: []string{local}}, Deps{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), local+":2") {
		t.Fatalf("err %v", err)
	}
}
