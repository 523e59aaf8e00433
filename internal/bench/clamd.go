package bench

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// clamd is a real clamd (Debian clamav-daemon) started for the full
// profile, on a Unix socket, the way internal/testutil/clamdtest does it:
// a tiny locally written signature database (EICAR and a random marker),
// so no download is needed. Scanning cost is clamd's real per-message
// work (protocol, parsing MIME, running the matcher) over a small
// database; with the full ClamAV database clamd needs ~1 GB of memory and
// more CPU per message (not measured here).
type clamd struct {
	addr string // "unix:/path"
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startClamd() (*clamd, error) {
	bin, err := tool("clamd")
	if err != nil {
		return nil, fmt.Errorf("%s (Debian package clamav-daemon)", strings.TrimSuffix(err.Error(), " (Debian package postfix)"))
	}
	// A short directory: Unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "moat-bench-clamd-")
	if err != nil {
		return nil, err
	}
	db := filepath.Join(dir, "db")
	for _, d := range []string{db, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	var rnd [8]byte
	rand.Read(rnd[:])
	ndb := "Eicar-Signature:0:*:" + hex.EncodeToString([]byte(eicar)) + "\n" +
		"Moat.Bench.Sample:0:*:" + hex.EncodeToString([]byte("MOAT-BENCH-"+hex.EncodeToString(rnd[:]))) + "\n"
	if err := os.WriteFile(filepath.Join(db, "moat-bench.ndb"), []byte(ndb), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	sock := filepath.Join(dir, "clamd.sock")
	tmp := filepath.Join(dir, "tmp")
	if d := os.Getenv("MOAT_BENCH_CLAMD_TMP"); d != "" {
		tmp = d
	}
	conf := fmt.Sprintf("Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\nLogFile %s\nLogTime no\n"+
		"StreamMaxLength 26214400\nScanArchive yes\nScanMail yes\nBytecode no\nMaxThreads 10\nSelfCheck 0\n",
		sock, db, tmp, filepath.Join(dir, "clamd.log"))
	if os.Geteuid() == 0 {
		conf += "User root\n"
	}
	confPath := filepath.Join(dir, "clamd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, "--foreground", "--config-file="+confPath)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c := &clamd{addr: "unix:" + sock, dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-c.done:
			b, _ := os.ReadFile(filepath.Join(dir, "clamd.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("clamd exited during startup: %s", strings.TrimSpace(string(b)))
		default:
		}
		if clamdPing(sock) == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("clamd did not answer PING within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func clamdPing(sock string) error {
	conn, err := net.DialTimeout("unix", sock, time.Second)
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

// pid returns clamd's process id (for its RSS).
func (c *clamd) pid() int { return c.cmd.Process.Pid }

func (c *clamd) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	os.RemoveAll(c.dir)
}
