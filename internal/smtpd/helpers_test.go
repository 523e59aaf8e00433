package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

// fileSpool is a small file-backed spool for tests that really fsyncs:
// drafts in tmp/, committed messages (bytes + JSON envelope) in ready/.
type fileSpool struct {
	dir        string
	failCommit bool
	commitErr  error // the error a failing commit returns (default: "disk on fire")
	mu         sync.Mutex
	committed  []string
	aborted    int
}

func newFileSpool(t testing.TB) *fileSpool {
	dir := t.TempDir()
	for _, d := range []string{"tmp", "ready"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return &fileSpool{dir: dir}
}

type fileDraft struct {
	sp *fileSpool
	id string
	f  *os.File
}

func (s *fileSpool) NewDraft() (Draft, error) {
	var b [8]byte
	rand.Read(b[:])
	id := strings.ToUpper(hex.EncodeToString(b[:]))
	f, err := os.OpenFile(filepath.Join(s.dir, "tmp", id), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	return &fileDraft{sp: s, id: id, f: f}, nil
}

func (d *fileDraft) Write(p []byte) (int, error) { return d.f.Write(p) }
func (d *fileDraft) ID() string                  { return d.id }
func (d *fileDraft) Open() (io.ReadCloser, error) {
	return os.Open(d.f.Name())
}

func (d *fileDraft) Commit(env *queue.Envelope) error {
	d.sp.mu.Lock()
	fail, ferr := d.sp.failCommit, d.sp.commitErr
	d.sp.mu.Unlock()
	if fail {
		if ferr != nil {
			return ferr
		}
		return errors.New("disk on fire")
	}
	if err := d.f.Sync(); err != nil {
		return err
	}
	js, err := json.Marshal(env)
	if err != nil {
		return err
	}
	ready := filepath.Join(d.sp.dir, "ready")
	if err := os.WriteFile(filepath.Join(ready, d.id+".env"), js, 0o600); err != nil {
		return err
	}
	if err := os.Rename(d.f.Name(), filepath.Join(ready, d.id+".eml")); err != nil {
		return err
	}
	dir, err := os.Open(ready)
	if err != nil {
		return err
	}
	err = dir.Sync()
	dir.Close()
	d.f.Close()
	if err != nil {
		return err
	}
	d.sp.mu.Lock()
	d.sp.committed = append(d.sp.committed, d.id)
	d.sp.mu.Unlock()
	return nil
}

func (d *fileDraft) Abort() {
	d.f.Close()
	os.Remove(d.f.Name())
	d.sp.mu.Lock()
	d.sp.aborted++
	d.sp.mu.Unlock()
}

func (s *fileSpool) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.committed...)
}

func (s *fileSpool) message(t testing.TB, id string) ([]byte, *queue.Envelope) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "ready", id+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join(s.dir, "ready", id+".env"))
	if err != nil {
		t.Fatal(err)
	}
	var env queue.Envelope
	if err := json.Unmarshal(js, &env); err != nil {
		t.Fatal(err)
	}
	return b, &env
}

// recorder is a check that records what it saw in each phase.
type recorder struct {
	mu       sync.Mutex
	conns    []*pipeline.Conn
	pregreet []bool
	syn      [][]byte
	ips      []string
	mails    []string
	datas    []*pipeline.Message
	rcptHard map[string]*verdict.Verdict // by recipient address
	connHard *verdict.Verdict
	dataRes  verdict.Result
}

func (r *recorder) Name() string { return "recorder" }
func (r *recorder) CheckConn(ctx context.Context, c *pipeline.Conn) verdict.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conns = append(r.conns, c)
	r.pregreet = append(r.pregreet, c.Pregreet)
	r.syn = append(r.syn, c.SYN)
	return verdict.Result{Hard: r.connHard}
}
func (r *recorder) CheckMail(ctx context.Context, tx *pipeline.Txn) verdict.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mails = append(r.mails, tx.From.String())
	r.ips = append(r.ips, tx.Conn.IP.String())
	return verdict.Result{Auth: []string{"spf=pass smtp.mailfrom=" + tx.From.Domain}}
}
func (r *recorder) CheckRcpt(ctx context.Context, tx *pipeline.Txn, rc *pipeline.Rcpt) verdict.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v := r.rcptHard[rc.Addr.String()]; v != nil {
		return verdict.Result{Hard: v}
	}
	return verdict.Result{}
}
func (r *recorder) CheckData(ctx context.Context, tx *pipeline.Txn, m *pipeline.Message) verdict.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.datas = append(r.datas, m)
	return r.dataRes
}

func (r *recorder) mailsSeen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.mails...)
}

type testEnv struct {
	t     testing.TB
	srv   *Server
	addr  string
	spool *fileSpool
	rec   *recorder
	reg   *prometheus.Registry
	logs  *logBuffer // the transaction lines (info and up), as text
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testDomains(ctx context.Context, d string) (bool, error) {
	switch d {
	case "customer.example", "other.example", "xn--bcher-kva.example":
		return true, nil
	case "broken.example":
		return false, errors.New("db down")
	}
	return false, nil
}

func newEnv(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Hostname = "mx.moat.test"
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.TLSDir = t.TempDir()
	if mod != nil {
		mod(&cfg)
	}
	e := &testEnv{t: t, spool: newFileSpool(t), rec: &recorder{rcptHard: map[string]*verdict.Verdict{}}, reg: prometheus.NewRegistry()}
	runner := pipeline.NewRunner([]pipeline.Check{e.rec}, func(string) *policy.Policy { return policy.Default() }, 5*time.Second)
	e.logs = &logBuffer{}
	var logw io.Writer = e.logs
	if os.Getenv("MOAT_TEST_LOG") == "1" {
		logw = io.MultiWriter(e.logs, os.Stderr)
	}
	srv, err := New(cfg, Deps{Spool: e.spool, Domains: testDomains, Runner: runner, Metrics: e.reg,
		Log: slog.New(slog.NewTextHandler(logw, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lc := net.ListenConfig{Control: listenControl}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	e.srv, e.addr = srv, ln.Addr().String()
	return e
}

// client is a raw SMTP client for exact protocol tests.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (e *testEnv) dial() *client {
	e.t.Helper()
	return e.dialFrom("")
}

func (e *testEnv) dialFrom(local string) *client {
	e.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	return &client{t: e.t, c: c, br: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (c *client) reply() string {
	c.t.Helper()
	var last string
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v (so far %q)", err, l)
		}
		last = strings.TrimRight(l, "\r\n")
		if len(last) < 4 || last[3] != '-' {
			return last
		}
	}
}

// replyLines reads one reply and returns every line.
func (c *client) replyLines() []string {
	c.t.Helper()
	var out []string
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v", err)
		}
		l = strings.TrimRight(l, "\r\n")
		out = append(out, l)
		if len(l) < 4 || l[3] != '-' {
			return out
		}
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// cmd sends one command line and returns the reply's last line.
func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.reply()
}

func (c *client) expect(line, prefix string) {
	c.t.Helper()
	if got := c.cmd(line); !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("%q: got %q, want %q...", line, got, prefix)
	}
}

// closed reports whether the server closed the connection (EOF or reset).
func (c *client) closed() bool {
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.br.ReadByte()
	return err != nil
}

// start greets and says EHLO.
func (c *client) start() *client {
	c.t.Helper()
	if g := c.reply(); !strings.HasPrefix(g, "220 ") {
		c.t.Fatalf("greeting %q", g)
	}
	c.send("EHLO client.test\r\n")
	c.replyLines()
	return c
}

// testLogger discards logs unless MOAT_TEST_LOG=1 (then stderr).
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MOAT_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s is required (MOAT_REQUIRE_TOOLS=1): %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func msg(subject, body string) string {
	return fmt.Sprintf("From: a@sender.test\r\nTo: b@customer.example\r\nSubject: %s\r\n\r\n%s", subject, body)
}

func newEnvB(b *testing.B) *testEnv { return newEnv(b, nil) }

func (e *testEnv) dialB(b *testing.B) *client {
	c := e.dial()
	c.c.SetDeadline(time.Time{})
	return c
}
