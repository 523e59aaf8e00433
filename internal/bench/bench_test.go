package bench

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMedianKeepsEveryRun(t *testing.T) {
	rows := []Row{{Target: "a", E2ERate: 300}, {Target: "b", E2ERate: 100}, {Target: "c", E2ERate: 200}}
	m := median(rows, func(r Row) float64 { return r.E2ERate })
	if m.Target != "c" {
		t.Fatalf("median = %s, want the 200/s run", m.Target)
	}
	if len(m.Runs) != 3 || m.Runs[0] != 300 || m.Runs[1] != 100 || m.Runs[2] != 200 {
		t.Fatalf("runs = %v, want every run in order", m.Runs)
	}
	var b bytes.Buffer
	Markdown(&b, []Row{m}, Options{})
	if !strings.Contains(b.String(), "runs: 300, 100, 200") {
		t.Fatalf("table does not list the runs:\n%s", b.String())
	}
}

func TestCPUTimeOfSelf(t *testing.T) {
	before := cpuTime(os.Getpid())
	if before <= 0 {
		t.Fatal("no cpu time read for this process")
	}
	// Burn CPU until the clock-tick counter moves (or give up after 10 s).
	after := before
	for deadline := time.Now().Add(10 * time.Second); after == before && time.Now().Before(deadline); {
		for i := 0; i < 1e6; i++ {
			after += 0
		}
		after = cpuTime(os.Getpid())
	}
	if after <= before {
		t.Fatalf("cpu time did not grow: %v -> %v", before, after)
	}
	if cpuTime(-1) != 0 {
		t.Fatal("cpu time of no process")
	}
}

func TestStartClamdHonoursTempDirEnv(t *testing.T) {
	if _, err := tool("clamd"); err != nil {
		if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	tmp := t.TempDir()
	t.Setenv("MOAT_BENCH_CLAMD_TMP", tmp)
	c, err := startClamd()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.TCP != "" || !strings.HasPrefix(c.Unix, "unix:/") || c.PID() <= 0 {
		t.Fatalf("clamd %q pid %d", c.Addrs, c.PID())
	}
	conf, err := os.ReadFile(c.Dir + "/clamd.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "TemporaryDirectory "+tmp+"\n") {
		t.Fatalf("MOAT_BENCH_CLAMD_TMP not used:\n%s", conf)
	}
}
