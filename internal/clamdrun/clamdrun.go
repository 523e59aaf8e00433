// Package clamdrun starts a real clamd (Debian clamav-daemon,
// /usr/sbin/clamd) on a Unix socket and, optionally, a loopback TCP port,
// with a tiny signature database written locally: no signature download is
// needed or attempted. The tests (through internal/testutil/clamdtest) and
// the benchmark harness (internal/bench) both use it.
//
// The database holds two signatures:
//
//   - EICARSignature matches the EICAR test string anywhere in a scanned
//     object (an .ndb body signature) and, when Options.Sigtool is set, the
//     exact 68-byte EICAR file (an .hdb MD5 signature built with
//     sigtool --md5);
//   - SampleSignature matches SampleMarker, a marker string generated per
//     process (an .ndb body signature), standing for "some other malware".
//
// clamd reports signatures from unsigned databases with the suffix
// ".UNOFFICIAL"; the constants below include it.
package clamdrun

import (
	"bufio"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EICAR is the standard anti-virus test file (68 bytes).
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

const (
	// EICARSignature is the name clamd reports for EICAR.
	EICARSignature = "Eicar-Signature.UNOFFICIAL"
	// SampleSignature is the name clamd reports for SampleMarker.
	SampleSignature = "Moat.Test.Sample.UNOFFICIAL"
)

// SampleMarker is a random string, fixed for one process, that the
// database detects as SampleSignature.
var SampleMarker = "MOAT-TEST-VIRUS-" + randHex(8)

// DefaultStreamMaxLength is the StreamMaxLength written to clamd.conf when
// Options leaves it zero.
const DefaultStreamMaxLength = 1 << 20

// DefaultMaxThreads is clamd's MaxThreads when Options leaves it zero.
const DefaultMaxThreads = 4

// Options tune one instance.
type Options struct {
	// Clamd is the clamd program; "" looks up "clamd" on PATH, then
	// /usr/sbin/clamd.
	Clamd string
	// Sigtool is the sigtool program used to build the .hdb signature of
	// the EICAR file; "" writes only the .ndb body signatures (which match
	// EICAR too).
	Sigtool         string
	StreamMaxLength int64         // clamd StreamMaxLength in bytes; 0 = DefaultStreamMaxLength
	IdleTimeout     time.Duration // clamd IdleTimeout (idle session connections are closed after it); 0 = clamd default (30s)
	MaxThreads      int           // clamd MaxThreads; 0 = DefaultMaxThreads
	NoTCP           bool          // listen only on the Unix socket
	// TempDir is clamd's TemporaryDirectory; "" = a tmp folder in Dir.
	TempDir string
}

// Clamd is one running clamd.
type Clamd struct {
	// Unix is the Unix socket address in Moat's form, "unix:/path".
	Unix string
	// TCP is the TCP address in Moat's form, "tcp:127.0.0.1:port" ("" with NoTCP).
	TCP string
	// Addrs lists Unix and, if enabled, TCP.
	Addrs []string
	// Dir holds clamd.conf, the database, the socket and clamd.log.
	Dir             string
	StreamMaxLength int64

	opts    Options
	conf    string
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	stopped bool
}

// Start builds a database in a new temporary directory and starts clamd,
// returning once it answers PING on every address. Close stops it and
// removes the directory. clamd gets SIGKILL if the calling process dies
// (Pdeathsig).
func Start(o Options) (*Clamd, error) {
	if o.Clamd == "" {
		o.Clamd = "/usr/sbin/clamd"
		if p, err := exec.LookPath("clamd"); err == nil {
			o.Clamd = p
		}
	}
	if o.StreamMaxLength <= 0 {
		o.StreamMaxLength = DefaultStreamMaxLength
	}
	if o.MaxThreads <= 0 {
		o.MaxThreads = DefaultMaxThreads
	}
	// A short directory: Unix socket paths are limited to 107 bytes, and
	// t.TempDir() paths grow with the test name.
	dir, err := os.MkdirTemp("", "moat-clamd-")
	if err != nil {
		return nil, err
	}
	c := &Clamd{Dir: dir, opts: o, StreamMaxLength: o.StreamMaxLength, conf: filepath.Join(dir, "clamd.conf")}
	if err := c.buildDB(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// A free port is found by listening on :0 and closing; another process
	// could take it before clamd binds, so retry with a new port on failure.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if err := c.writeConf(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if lastErr = c.run(); lastErr == nil {
			return c, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (c *Clamd) buildDB() error {
	db := filepath.Join(c.Dir, "db")
	if err := os.MkdirAll(filepath.Join(c.Dir, "tmp"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(db, 0o700); err != nil {
		return err
	}
	ndb := strings.TrimSuffix(EICARSignature, ".UNOFFICIAL") + ":0:*:" + hex.EncodeToString([]byte(EICAR)) + "\n" +
		strings.TrimSuffix(SampleSignature, ".UNOFFICIAL") + ":0:*:" + hex.EncodeToString([]byte(SampleMarker)) + "\n"
	if err := os.WriteFile(filepath.Join(db, "moat-test.ndb"), []byte(ndb), 0o600); err != nil {
		return err
	}
	if c.opts.Sigtool == "" {
		return nil
	}
	// The .hdb line is produced by sigtool from a real file, as an operator
	// would; we check it against our own MD5 so a sigtool change is noticed.
	eicarFile := filepath.Join(c.Dir, "eicar.com")
	if err := os.WriteFile(eicarFile, []byte(EICAR), 0o600); err != nil {
		return err
	}
	out, err := exec.Command(c.opts.Sigtool, "--md5", eicarFile).Output()
	if err != nil {
		return fmt.Errorf("sigtool --md5: %w", err)
	}
	os.Remove(eicarFile)
	sum := md5.Sum([]byte(EICAR))
	want := hex.EncodeToString(sum[:]) + ":" + strconv.Itoa(len(EICAR)) + ":"
	line := strings.TrimSpace(string(out))
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("sigtool --md5 printed %q, want prefix %q", line, want)
	}
	hdb := want + strings.TrimSuffix(EICARSignature, ".UNOFFICIAL") + "\n"
	return os.WriteFile(filepath.Join(db, "moat-test.hdb"), []byte(hdb), 0o600)
}

func (c *Clamd) writeConf() error {
	sock := filepath.Join(c.Dir, "clamd.sock")
	c.Unix = "unix:" + sock
	c.Addrs = []string{c.Unix}
	tmp := c.opts.TempDir
	if tmp == "" {
		tmp = filepath.Join(c.Dir, "tmp")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\n",
		sock, filepath.Join(c.Dir, "db"), tmp)
	fmt.Fprintf(&b, "LogFile %s\nLogTime no\nStreamMaxLength %d\n", filepath.Join(c.Dir, "clamd.log"), c.StreamMaxLength)
	fmt.Fprintf(&b, "ScanArchive yes\nScanMail yes\nBytecode no\nMaxThreads %d\nSelfCheck 0\n", c.opts.MaxThreads)
	if c.opts.IdleTimeout > 0 {
		fmt.Fprintf(&b, "IdleTimeout %d\n", int((c.opts.IdleTimeout+time.Second-1)/time.Second))
	}
	if os.Geteuid() == 0 {
		b.WriteString("User root\n")
	}
	if !c.opts.NoTCP {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.TCP = "tcp:127.0.0.1:" + strconv.Itoa(port)
		c.Addrs = append(c.Addrs, c.TCP)
		fmt.Fprintf(&b, "TCPAddr 127.0.0.1\nTCPSocket %d\n", port)
	}
	return os.WriteFile(c.conf, []byte(b.String()), 0o600)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// run starts clamd with the current config and waits until it answers PING
// on every address.
func (c *Clamd) run() error {
	os.Remove(strings.TrimPrefix(c.Unix, "unix:"))
	cmd := exec.Command(c.opts.Clamd, "--foreground", "--config-file="+c.conf)
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start clamd: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	c.mu.Lock()
	c.cmd, c.exited, c.stopped = cmd, exited, false
	c.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	delay := 5 * time.Millisecond
	for _, addr := range c.Addrs {
		for {
			select {
			case <-exited:
				return fmt.Errorf("clamd exited during startup: %s", c.logTail())
			default:
			}
			if Ping(addr) == nil {
				break
			}
			if time.Now().After(deadline) {
				c.kill()
				return fmt.Errorf("clamd did not answer PING on %s within 60s: %s", addr, c.logTail())
			}
			time.Sleep(delay)
			if delay < 100*time.Millisecond {
				delay *= 2
			}
		}
	}
	return nil
}

func (c *Clamd) logTail() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "clamd.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Log returns clamd's log so far.
func (c *Clamd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "clamd.log"))
	return string(b)
}

// Ping sends zPING to a clamd address in Moat's form ("unix:/path" or
// "tcp:host:port") and checks for PONG.
func Ping(addr string) error {
	network, a, _ := strings.Cut(addr, ":")
	conn, err := net.DialTimeout(network, a, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("zPING\x00")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString(0)
	if err != nil {
		return err
	}
	if reply != "PONG\x00" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// Instream scans data with zINSTREAM (one chunk) on a clamd address in
// Moat's form and returns clamd's reply without its NUL, e.g. "stream: OK"
// or "stream: Eicar-Signature.UNOFFICIAL FOUND".
func Instream(addr, data string) (string, error) {
	network, a, _ := strings.Cut(addr, ":")
	conn, err := net.DialTimeout(network, a, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	n := len(data)
	msg := "zINSTREAM\x00" + string([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + data + "\x00\x00\x00\x00"
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(conn).ReadString(0)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(reply, "\x00"), nil
}

func (c *Clamd) kill() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.stopped = true
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// Stop terminates clamd and waits for it to exit. The socket file and the
// TCP port stop answering.
func (c *Clamd) Stop() { c.kill() }

// Restart stops clamd if it runs and starts it again on the same socket and
// port, returning once it answers PING.
func (c *Clamd) Restart() error {
	c.kill()
	err := c.run()
	if err != nil && strings.Contains(err.Error(), "exited") && c.TCP != "" {
		// The port may be taken by someone else meanwhile; a new port is
		// better than a failed start.
		if werr := c.writeConf(); werr != nil {
			return werr
		}
		err = c.run()
	}
	return err
}

// Running reports whether the clamd process is alive.
func (c *Clamd) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// PID returns the process id of the clamd last started.
func (c *Clamd) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Close stops clamd and removes its directory.
func (c *Clamd) Close() {
	c.kill()
	os.RemoveAll(c.Dir)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(errors.New("clamdrun: no randomness"))
	}
	return hex.EncodeToString(b)
}
