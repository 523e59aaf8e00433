// Package e2e drives the built moat binary over real sockets: real SMTP
// clients in, real backends (moat sink, Postfix) out.
package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"moat.dev/moat/internal/sink"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/testutil/dnstest"
)

var moatBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "moat-e2e-bin")
	if err != nil {
		panic(err)
	}
	moatBin = filepath.Join(dir, "moat")
	build := exec.Command("go", "build", "-race", "-o", moatBin, "moat.dev/moat/cmd/moat")
	if os.Getenv("MOAT_E2E_NORACE") != "" {
		build = exec.Command("go", "build", "-o", moatBin, "moat.dev/moat/cmd/moat")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building moat:", err)
		os.Exit(1)
	}
	code := m.Run()
	clamdtest.Cleanup()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer is a goroutine-safe log buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// gateway is a moat serve process.
type gateway struct {
	t        testing.TB
	dir      string
	cfgPath  string
	SMTP     string
	HTTP     string
	Web      string
	DNS      *dnstest.Server
	cmd      *exec.Cmd
	log      *syncBuffer
	waitDone chan struct{}
}

// writeConfig writes a config file with the given body; SMTP/HTTP listen
// addresses and the data dir are filled in.
func newGateway(t testing.TB, body string) *gateway {
	t.Helper()
	g := &gateway{t: t, dir: t.TempDir(), SMTP: freeAddr(t), HTTP: freeAddr(t)}
	g.cfgPath = filepath.Join(g.dir, "moat.yaml")
	// Real peers: a clamd with a local signature database, and an
	// authoritative DNS server on loopback (the tests plant records in it).
	clamd := clamdtest.Shared(t)
	g.DNS = dnstest.Start(t, "sender.test. 300 IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"")
	addrs := ""
	for _, a := range clamd.Addrs {
		addrs += fmt.Sprintf(" %q,", a)
	}
	g.Web = freeAddr(t)
	cfg := fmt.Sprintf("hostname: moat.test\ndata_dir: %s\nweb:\n  listen: %s\n  cookie_secure: false\nhttp:\n  listen: %s\nsmtp:\n  listen: [%q]\ndns:\n  resolvers: [%q]\n  timeout: 500ms\nchecks:\n  clamav:\n    addrs: [%s]\n",
		filepath.Join(g.dir, "data"), g.Web, g.HTTP, g.SMTP, g.DNS.Addr, strings.TrimSuffix(addrs, ",")) + body
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("moat log:\n%s", g.log)
		}
	})
	g.log = &syncBuffer{}
	return g
}

// Start runs moat serve and waits until it accepts SMTP connections. The
// listen addresses were free when the config was written, but another
// test's connection may have taken one since (ephemeral ports come from
// the same range): then it moves the gateway to fresh ports and tries
// again.
func (g *gateway) Start() {
	g.t.Helper()
	for attempt := 0; ; attempt++ {
		if g.start(attempt < 3) {
			return
		}
		g.log.Write([]byte("--- listen address taken; retrying on fresh ports ---\n"))
		b, err := os.ReadFile(g.cfgPath)
		if err != nil {
			g.t.Fatal(err)
		}
		cfg := string(b)
		for _, a := range []*string{&g.SMTP, &g.HTTP, &g.Web} {
			n := freeAddr(g.t)
			cfg = strings.ReplaceAll(cfg, *a, n)
			*a = n
		}
		if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o644); err != nil {
			g.t.Fatal(err)
		}
	}
}

// start runs moat serve once; it returns false (when retry is allowed)
// if serve exited because a listen address was in use.
func (g *gateway) start(retry bool) bool {
	g.t.Helper()
	logFrom := len(g.log.String())
	g.cmd = exec.Command(moatBin, "serve", "--config", g.cfgPath)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.waitDone = make(chan struct{})
	go func() { g.cmd.Wait(); close(g.waitDone) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		// Serve's own "smtp listening" line, not only a successful dial:
		// whoever took the port would accept the dial too.
		if strings.Contains(g.log.String()[logFrom:], `msg="smtp listening"`) {
			c, err := net.DialTimeout("tcp", g.SMTP, time.Second)
			if err == nil {
				c.Close()
				return true
			}
		}
		select {
		case <-g.waitDone:
			g.cmd = nil
			if retry && strings.Contains(g.log.String()[logFrom:], "address already in use") {
				return false
			}
			g.t.Fatalf("moat serve exited early:\n%s", g.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	g.t.Fatalf("moat serve did not listen on %s:\n%s", g.SMTP, g.log)
	return false
}

// Kill sends SIGKILL and waits for the process to go.
func (g *gateway) Kill() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.waitDone
	g.cmd = nil
}

// Stop asks for a clean shutdown (SIGTERM), then kills after 20 s.
func (g *gateway) Stop() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.waitDone:
	case <-time.After(20 * time.Second):
		g.t.Errorf("moat serve did not stop within 20s of SIGTERM")
		g.Kill()
	}
	g.cmd = nil
}

// moat runs a moat subcommand and returns its output and exit code.
func (g *gateway) moat(args ...string) (string, int) {
	g.t.Helper()
	return runMoat(g.t, "", args...)
}

func runMoat(t testing.TB, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(moatBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("running moat %v: %v", args, err)
	}
	return string(out), 0
}

// send delivers one message with go-smtp's client and returns the final
// reply (the error is an *smtp.SMTPError for SMTP refusals).
func send(addr, from string, to []string, msg string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("client.sender.test"); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

// queueID extracts the queue ID from "Ok: queued as ID".
func queueID(reply string) string {
	if i := strings.LastIndex(reply, " "); i >= 0 {
		return reply[i+1:]
	}
	return reply
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return filepath.Join(dir, name)
			}
		}
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s is not installed", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

func smtpDialRaw(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }

func b64lines(s string) string {
	enc := base64.StdEncoding.EncodeToString([]byte(s))
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

// TestHarnessMovesOffTakenPort: when a listen address the config names is
// taken by the time serve starts, Start moves the gateway to fresh ports
// instead of failing the test.
func TestHarnessMovesOffTakenPort(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	taken := g.SMTP
	ln, err := net.Listen("tcp", taken)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.Start()
	if g.SMTP == taken {
		t.Fatalf("gateway still on the taken address %s", taken)
	}
	if !strings.Contains(g.log.String(), "retrying on fresh ports") {
		t.Fatalf("no retry in the log:\n%s", g.log)
	}
}
