package clamdrun

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needClamd(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("clamd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/clamd"); err == nil {
		return "/usr/sbin/clamd"
	}
	if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
		t.Fatal("clamd is not installed (MOAT_REQUIRE_TOOLS=1)")
	}
	t.Skip("clamd is not installed")
	return ""
}

func scan(t *testing.T, addr, data string) string {
	t.Helper()
	reply, err := Instream(addr, data)
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

// The benchmark's way: no sigtool (body signatures only), a Unix socket
// only, more threads and a TemporaryDirectory elsewhere.
func TestStartWithoutSigtoolElsewhereTemp(t *testing.T) {
	bin := needClamd(t)
	tmp := t.TempDir()
	c, err := Start(Options{Clamd: bin, NoTCP: true, MaxThreads: 10, StreamMaxLength: 25 << 20, TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.TCP != "" || len(c.Addrs) != 1 || c.PID() <= 0 || !c.Running() {
		t.Fatalf("addrs %q pid %d running %v", c.Addrs, c.PID(), c.Running())
	}
	conf, err := os.ReadFile(filepath.Join(c.Dir, "clamd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TemporaryDirectory " + tmp + "\n", "MaxThreads 10\n", "StreamMaxLength 26214400\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("clamd.conf lacks %q:\n%s", want, conf)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "db", "moat-test.hdb")); !os.IsNotExist(err) {
		t.Errorf("an .hdb was written without sigtool: %v", err)
	}
	if got := scan(t, c.Unix, EICAR); got != "stream: "+EICARSignature+" FOUND" {
		t.Errorf("eicar: %q", got)
	}
	if got := scan(t, c.Unix, "x "+SampleMarker+" y"); got != "stream: "+SampleSignature+" FOUND" {
		t.Errorf("sample: %q", got)
	}
	if got := scan(t, c.Unix, "hello"); got != "stream: OK" {
		t.Errorf("clean: %q", got)
	}
	c.Close()
	if c.Running() || Ping(c.Unix) == nil {
		t.Fatal("clamd still answers after Close")
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("directory left after Close: %v", err)
	}
}
